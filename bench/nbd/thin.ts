// A thin device over NBD against the plain-file export of our own server, same run, same
// fio jobs: first writes (every block provisioned), then overwrites, then reads. Writes the
// "## Thin device over NBD" section of docs/benchmarks.md.
//
//   bash bench/nbd/thin.sh [--size-mib N] [--sync-io-max BYTES] [--no-docs]
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { machineLine, median, updateBenchmarkSection } from '../report';

const run = promisify(execFile);
const repoRoot = path.resolve(__dirname, '../../../..');
const cli = path.join(repoRoot, 'dist/cli/main.js');
const args = process.argv.slice(2);
const sizeMib = Number(args[args.indexOf('--size-mib') + 1] || 0) || 1024;
// Both servers serve data I/O up to this size synchronously, as in the NBD exporter benchmark.
const syncIoMax = Number(args[args.indexOf('--sync-io-max') + 1] || 0) || 1024 * 1024;

interface Job {
  label: string;
  rw: 'write' | 'read' | 'randwrite' | 'randread';
  bs: string;
  iodepth: number;
  /** Time-based jobs loop over the device; a one-pass job measures first writes exactly. */
  onePass?: boolean;
}

const jobs: Job[] = [
  { label: 'first write (provisioning), seq 1M qd16', rw: 'write', bs: '1M', iodepth: 16, onePass: true },
  { label: 'overwrite, seq 1M qd16', rw: 'write', bs: '1M', iodepth: 16 },
  { label: 'read, seq 1M qd16', rw: 'read', bs: '1M', iodepth: 16 },
  { label: 'overwrite, rand 4K qd16', rw: 'randwrite', bs: '4k', iodepth: 16 },
  { label: 'read, rand 4K qd16', rw: 'randread', bs: '4k', iodepth: 16 },
];

/** Runs per row and server; first writes use a fresh device (and a fresh plain file) each. */
const ROUNDS = 3;

async function fio(socket: string, exportName: string, job: Job): Promise<number> {
  // Each run starts with no dirty pages left by the one before (their writeback would land on
  // whichever server runs next).
  await run('sync');
  const timing = job.onePass ? [] : ['--time_based', '--runtime=5', '--ramp_time=1'];
  const { stdout } = await run(
    'fio',
    [
      '--name=bench',
      '--ioengine=nbd',
      `--uri=nbd+unix:///${exportName}?socket=${socket}`,
      `--rw=${job.rw}`,
      `--bs=${job.bs}`,
      `--iodepth=${job.iodepth}`,
      `--size=${sizeMib}M`,
      ...timing,
      '--output-format=json',
    ],
    { maxBuffer: 64 * 1024 * 1024 },
  );
  const report = JSON.parse(stdout.slice(stdout.indexOf('{')));
  const side = job.rw.includes('read') ? report.jobs[0].read : report.jobs[0].write;
  return job.bs === '1M' ? side.bw / 1024 : side.iops;
}

async function waitFor(socket: string, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 400 && !existsSync(socket); i++) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(process.env.BENCH_DIR ?? os.tmpdir(), 'thin-nbd-bench-'));
  const children: ChildProcess[] = [];
  try {
    const env = { ...process.env, THINPOOL_LOG_LEVEL: 'warn' };
    const pool = path.join(dir, 'pool');
    await run(process.execPath, [cli, 'pool', 'create', pool, '--data-size', `${sizeMib * (ROUNDS + 1)}M`]);
    const thinSock = path.join(dir, 'thin.sock');
    const thinExports: string[] = [];
    const fileSocks: string[] = [];
    for (let n = 1; n <= ROUNDS; n++) {
      await run(process.execPath, [cli, 'thin', 'create', pool, String(n), '--size', `${sizeMib}M`]);
      thinExports.push('--export', `d${n}=${n}`);
      const raw = path.join(dir, `plain-${n}.img`);
      await writeFile(raw, '');
      await run('truncate', ['-s', `${sizeMib}M`, raw]);
      const fileSock = path.join(dir, `file-${n}.sock`);
      const file = spawn(
        process.execPath,
        [path.join(__dirname, 'serve.js'), raw, '--socket', fileSock, '--sync-io-max', String(syncIoMax)],
        { stdio: 'ignore', env },
      );
      children.push(file);
      fileSocks.push(fileSock);
    }
    const thin = spawn(
      process.execPath,
      [cli, 'nbd', 'serve', pool, '--socket', thinSock, ...thinExports, '--sync-io-max', String(syncIoMax)],
      { stdio: 'ignore', env },
    );
    children.push(thin);
    await waitFor(thinSock, thin);
    for (const [i, sock] of fileSocks.entries()) await waitFor(sock, children[i]);

    const rows: string[] = [];
    const ratios: number[] = [];
    for (const job of jobs) {
      // The median of ROUNDS runs per server, alternating which goes first (single runs on a
      // shared machine move by ±30%). First writes go to a fresh device and file each round; the
      // rest run on the first ones, provisioned by then.
      const thinRuns: number[] = [];
      const plainRuns: number[] = [];
      for (let round = 0; round < ROUNDS; round++) {
        const target = job.onePass ? round : 0;
        const thinRun = async () => thinRuns.push(await fio(thinSock, `d${target + 1}`, job));
        const plainRun = async () => plainRuns.push(await fio(fileSocks[target], 'bench', job));
        if (round % 2 === 0) {
          await thinRun();
          await plainRun();
        } else {
          await plainRun();
          await thinRun();
        }
      }
      const ours = median(thinRuns);
      const plain = median(plainRuns);
      const unit = job.bs === '1M' ? 'MiB/s' : 'IOPS';
      ratios.push(ours / plain);
      rows.push(
        `| ${job.label} | ${ours.toFixed(0)} ${unit} | ${plain.toFixed(0)} ${unit} | ${(ours / plain).toFixed(2)}× |`,
      );
    }
    const worst = Math.min(...ratios);
    const section = [
      '## Thin device over NBD',
      '',
      `Run with \`bash bench/nbd/thin.sh\`, ${new Date().toISOString().slice(0, 10)}, ${machineLine()}, ${sizeMib} MiB device.`,
      "Both exports are our NBD server on unix sockets, measured with fio's nbd engine: a thin",
      'device of a file-backed pool (`thinpool nbd serve`) and a plain file (`FileBlockDevice`),',
      `both serving data I/O up to ${syncIoMax / 1024} KiB synchronously (\`--sync-io-max\`). Each`,
      'row is the median of three runs per server, alternating which goes first (5 s each; first',
      'writes on a fresh thin device and a fresh sparse file each time).',
      '',
      '| workload | thin device | plain file | thin / file |',
      '| --- | --- | --- | --- |',
      ...rows,
      '',
      `- target: thin device within 0.8× of the plain-file export: ${worst >= 0.8 ? 'met' : 'NOT met'} (worst ${worst.toFixed(2)}×)`,
      '',
      'What bounds it (CPU profiles, perf and `strace -c` of both servers under fio): per request the',
      'thin device adds a mapping lookup from cached metadata (a few µs for 4 KiB requests) to what the',
      'plain file does. First writes also allocate blocks and insert mappings, so the periodic commit',
      'then syncs the data file inside its exclusive section before it writes them (new mappings must',
      'not reach the disk before their data), and writers wait for it. Overwrites of mapped blocks',
      'change no metadata: a periodic commit with nothing to commit does nothing (as in dm-thin), and',
      "their dirty pages wait for the client's flush or the kernel's writeback, as on the plain file.",
      'New mappings are also appended to the mapping journal (one pwrite per event-loop turn, so a',
      'killed server loses no acknowledged write; docs/engine.md). A 1 MiB overwrite checks its 16',
      'blocks in one walk of the mapping tree, and so does a 1 MiB read whose blocks lie in a row',
      '(then one pread). Fixed on the way: WRITE payloads arrive without per-read allocations, and',
      'the receive slab is rewound once its bytes are consumed (a new 256 KiB slab every few 1 MiB',
      "writes had V8 run a mark-compact every ~55 ms, 10% of the thin server's CPU, where the",
      "plain server's tiny heap made the same collections nearly free); reads and overwrites inside",
      'one block skip the per-segment fan-out and lock queue. Under 4 KiB random reads the thin',
      'server spent 8.3 µs of CPU per request against 6.0 for the plain file; three changes brought',
      'it to 5.9–6.4 against 5.2: mapping lookups decode the leaf in place, a metadata cache hit sets',
      'a flag instead of moving its entry to the end of the LRU map (eviction gives flagged blocks a',
      'second chance, as CLOCK does), and the per-request NBD counters are plain numbers that the',
      "metrics endpoint takes over when scraped (prom-client's label hashing alone cost ~0.9 µs).",
      'Each run starts after a `sync`, so no run pays for the writeback of the one before.',
      '',
      'The random-overwrite row favours the thin device for a reason outside our server: a 4 KiB',
      "pwrite into a freshly written 1 GiB file took 15–21 µs on this VM's ext4, into the pool's data",
      'file 3.5 µs (a standalone pwrite loop on both files), so that ratio says little about us.',
    ].join('\n');
    process.stdout.write(section + '\n');
    if (!args.includes('--no-docs')) updateBenchmarkSection(section);
  } finally {
    for (const c of children) c.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
