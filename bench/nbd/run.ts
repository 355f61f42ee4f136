// NBD exporter benchmark: our server (FileBlockDevice), `nbdkit file` and `qemu-nbd` on qcow2,
// all over unix sockets on the same data, measured with fio's nbd engine in one interleaved
// run. Writes the table into docs/benchmarks.md under "## NBD exporter".
//
//   bash bench/nbd/run.sh [--runtime SECONDS] [--reps N] [--size-mib N] [--dir DIR]
//                         [--sync-io-max BYTES] [--no-docs]
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const repoRoot = path.resolve(__dirname, '../../../..');

interface Job {
  label: string;
  rw: 'read' | 'write' | 'randread' | 'randwrite';
  bs: string;
  iodepth: number;
}

const jobs: Job[] = [
  { label: 'seq write 1M qd1', rw: 'write', bs: '1M', iodepth: 1 },
  { label: 'seq read 1M qd1', rw: 'read', bs: '1M', iodepth: 1 },
  { label: 'seq write 1M qd16', rw: 'write', bs: '1M', iodepth: 16 },
  { label: 'seq read 1M qd16', rw: 'read', bs: '1M', iodepth: 16 },
  { label: 'rand write 4K qd1', rw: 'randwrite', bs: '4k', iodepth: 1 },
  { label: 'rand read 4K qd1', rw: 'randread', bs: '4k', iodepth: 1 },
  { label: 'rand write 4K qd16', rw: 'randwrite', bs: '4k', iodepth: 16 },
  { label: 'rand read 4K qd16', rw: 'randread', bs: '4k', iodepth: 16 },
];

interface Server {
  name: string;
  socket: string;
  process: ChildProcess;
}

function option(args: string[], flag: string, fallback: string): string {
  const at = args.indexOf(flag);
  return at >= 0 && args[at + 1] !== undefined ? args[at + 1] : fallback;
}

async function waitForSocket(socket: string, child: ChildProcess, name: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (existsSync(socket)) return;
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode} before listening`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${name} did not create ${socket}`);
}

async function startServers(dir: string, raw: string, qcow2: string, syncIoMax: number): Promise<Server[]> {
  const servers: Server[] = [];
  const start = async (name: string, command: string, args: string[], socket: string): Promise<void> => {
    const env = { ...process.env, THINPOOL_LOG_LEVEL: 'warn' };
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'inherit'], env });
    servers.push({ name, socket, process: child });
    await waitForSocket(socket, child, name);
  };
  const ours = path.join(dir, 'ours.sock');
  const serve = path.join(__dirname, 'serve.js');
  // Requests up to syncIoMax bytes are served synchronously (see FileBlockDevice.syncIoMaxBytes).
  await start(
    'thinpool-csi',
    process.execPath,
    [serve, raw, '--socket', ours, '--sync-io-max', String(syncIoMax)],
    ours,
  );
  const nbdkit = path.join(dir, 'nbdkit.sock');
  await start('nbdkit file', 'nbdkit', ['-f', '-U', nbdkit, 'file', raw], nbdkit);
  const qemu = path.join(dir, 'qemu.sock');
  await start('qemu-nbd qcow2', 'qemu-nbd', ['-f', 'qcow2', '-k', qemu, '-t', qcow2], qemu);
  return servers;
}

/** Throughput in MiB/s (sequential) or IOPS (random) for one fio run. */
async function fio(server: Server, job: Job, runtimeSeconds: number, sizeMib: number): Promise<number> {
  const { stdout } = await run(
    'fio',
    [
      '--name=bench',
      '--ioengine=nbd',
      `--uri=nbd+unix:///?socket=${server.socket}`,
      `--rw=${job.rw}`,
      `--bs=${job.bs}`,
      `--iodepth=${job.iodepth}`,
      `--size=${sizeMib}M`,
      '--time_based',
      `--runtime=${runtimeSeconds}`,
      '--ramp_time=1',
      '--output-format=json',
    ],
    { maxBuffer: 64 * 1024 * 1024 },
  );
  // fio's nbd engine prints a line before the JSON.
  const report = JSON.parse(stdout.slice(stdout.indexOf('{')));
  const side = job.rw.includes('read') ? report.jobs[0].read : report.jobs[0].write;
  return job.bs === '1M' ? side.bw / 1024 : side.iops;
}

function formatBytes(bytes: number): string {
  return bytes >= 1024 * 1024 && bytes % (1024 * 1024) === 0
    ? `${bytes / (1024 * 1024)} MiB`
    : `${Math.round(bytes / 1024)} KiB`;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function renderSection(
  results: Map<string, Map<string, number>>,
  names: string[],
  meta: {
    runtimeSeconds: number;
    reps: number;
    sizeMib: number;
    syncIoMax: number;
    date: string;
    load: [number, number];
  },
): string {
  const lines: string[] = [];
  lines.push('## NBD exporter', '');
  lines.push(
    `fio ${'`'}--ioengine=nbd${'`'} over unix sockets, ${meta.sizeMib} MiB page-cache-backed image, ` +
      `${meta.runtimeSeconds} s per run after 1 s ramp, median of ${meta.reps} interleaved runs; ` +
      `${os.cpus().length} CPUs; ${meta.date}. Produced by ${'`'}bash bench/nbd/run.sh${'`'}. ` +
      `Load average ${meta.load[0].toFixed(1)} before and ${meta.load[1].toFixed(1)} after the run ` +
      '(other work shares the machine: compare ratios, not absolute numbers).',
    '',
  );
  lines.push(
    'Our server serves a raw file through `FileBlockDevice` (requests ≤ ' +
      `${formatBytes(meta.syncIoMax)} served synchronously, larger ones on the libuv threadpool); ` +
      '`nbdkit file` serves the same file; ' +
      '`qemu-nbd` serves a qcow2 copy of it that holds an internal snapshot (the closest thin+snapshot peer). ' +
      'Sequential rows are MiB/s, random rows IOPS.',
    '',
  );
  lines.push(`| workload | ${names.join(' | ')} | ours / nbdkit | ours / qemu-nbd |`);
  lines.push(`|---|${names.map(() => '---:').join('|')}|---:|---:|`);
  for (const job of jobs) {
    const row = results.get(job.label) as Map<string, number>;
    const ours = row.get(names[0]) ?? 0;
    const ratio = (peer: string): string => {
      const value = row.get(peer) ?? 0;
      return value > 0 ? `${(ours / value).toFixed(2)}×` : 'n/a';
    };
    const cells = names.map((n) => Math.round(row.get(n) ?? 0).toString());
    lines.push(`| ${job.label} | ${cells.join(' | ')} | ${ratio(names[1])} | ${ratio(names[2])} |`);
  }
  lines.push(
    '',
    'Targets: sequential ≥ 0.9× nbdkit, 4 KiB random qd16 ≥ 1.0× qemu-nbd.',
    '',
    'What bounds ours (perf, `node --cpu-prof` and `strace -c` on this machine): for 1 MiB requests ' +
      "most of the server's CPU is the kernel copying (socket ↔ user, page cache ↔ user), the same work " +
      'nbdkit does; JavaScript is a few per cent. Large WRITE payloads are read straight into recycled ' +
      'buffers (direct receive: ~200 KiB per read on a unix socket instead of 64 KiB, no per-read ' +
      'allocation, so no garbage-collection churn) and written with one pwrite; READ data leaves from ' +
      'recycled buffers without a copy. What is left is scheduling: nbdkit serves each request on its ' +
      'own thread with blocking calls, we serve all of them from one event loop; a libuv threadpool ' +
      'round trip (two thread wake-ups) costs ~100-150 µs of CPU and latency per 1 MiB request here, ' +
      'which is why requests up to the threshold above are served synchronously (except a burst of ' +
      'large reads: all but the first of one event-loop turn go to the threadpool, so their copies use ' +
      'the other core). Random 4 KiB I/O is bound by syscalls: ~12-20 µs of server CPU per request, ' +
      'about what nbdkit spends. Other work shares these 2 cores, so single runs vary by ±30 %: ' +
      'compare ratios within a run.',
    '',
    'Where the sequential rows fall short of 0.9× (measured with the same fio jobs, one server at a ' +
      'time): per 1 MiB READ at qd16 our server spends 250-350 µs of CPU (user + system, from ' +
      '/proc) against 215-240 µs for nbdkit. A unix socket takes about 208 KiB at a time ' +
      '(net.core.wmem_default), so a 1 MiB reply leaves in ~3.6 writev calls with an event-loop ' +
      'wake-up between them (strace: 3.6 writev and 3.7 epoll_pwait per request), where nbdkit ' +
      'blocks in send on one of its threads and the kernel carries on without a return to user space. ' +
      'With the socket buffers raised machine-wide to 4 MiB (a test, not how the benchmark runs) ' +
      'our qd1 rows went to 1.02× (read) and 1.10× (write) of nbdkit while qd16 reads stayed at ' +
      '0.75× (nbdkit then used both cores, 5750 MiB/s); a larger SO_SNDBUF on our side alone changed ' +
      "nothing measurable, as the client's buffers govern the writes. At qd16 reads the bound is one " +
      "event loop doing every socket copy while nbdkit's threads spread them over both cores.",
    '',
    'Random 4 KiB writes into the sequentially written image are dear on this kernel: after ' +
      '200,000 random 4 KiB pwrites into a 1 GiB file written in 1 MiB pieces, /proc/meminfo showed ' +
      'the whole GiB dirty (each write dirties a large page-cache folio), and each pwrite took ' +
      '10-21 µs, in a standalone loop as much as under the server. Served synchronously from one ' +
      'event loop that is the bound of our rand-write row (it moved between 0.85× and 1.17× of ' +
      'qemu-nbd in two runs today), while qemu-nbd hands its writes to worker threads (its default aio=threads), which can use both cores.',
    '',
  );
  return lines.join('\n');
}

async function updateDocs(section: string): Promise<void> {
  const file = path.join(repoRoot, 'docs', 'benchmarks.md');
  let text = existsSync(file) ? await readFile(file, 'utf8') : '# Benchmarks\n';
  const start = text.indexOf('## NBD exporter');
  if (start >= 0) {
    const next = text.indexOf('\n## ', start + 1);
    text = text.slice(0, start) + section + (next >= 0 ? text.slice(next + 1) : '');
  } else {
    text = text.trimEnd() + '\n\n' + section;
  }
  await writeFile(file, text);
  process.stdout.write(`updated ${file}\n`);
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const runtimeSeconds = Number(option(args, '--runtime', '4'));
  const reps = Number(option(args, '--reps', '2'));
  const sizeMib = Number(option(args, '--size-mib', '1024'));
  // 1 MiB: a threadpool round trip costs more than the page-cache copy it offloads (docs/nbd.md).
  const syncIoMax = Number(option(args, '--sync-io-max', String(1024 * 1024)));
  const dir = await mkdtemp(path.join(option(args, '--dir', os.tmpdir()), 'nbd-bench-'));
  const raw = path.join(dir, 'disk.raw');
  const qcow2 = path.join(dir, 'disk.qcow2');
  let servers: Server[] = [];
  try {
    process.stdout.write(`preparing ${sizeMib} MiB image in ${dir}\n`);
    await run('dd', ['if=/dev/urandom', `of=${raw}`, 'bs=1M', `count=${sizeMib}`, 'status=none']);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
    await run('qemu-img', ['snapshot', '-c', 'base', qcow2]);
    servers = await startServers(dir, raw, qcow2, syncIoMax);
    const loadBefore = os.loadavg()[0];
    const names = servers.map((s) => s.name);
    const samples = new Map<string, Map<string, number[]>>();
    for (let rep = 0; rep < reps; rep++) {
      for (const job of jobs) {
        for (const server of servers) {
          const value = await fio(server, job, runtimeSeconds, sizeMib);
          const byServer = samples.get(job.label) ?? new Map<string, number[]>();
          samples.set(job.label, byServer);
          byServer.set(server.name, [...(byServer.get(server.name) ?? []), value]);
          process.stdout.write(
            `rep ${rep + 1} ${job.label.padEnd(20)} ${server.name.padEnd(16)} ${value.toFixed(0)}\n`,
          );
        }
      }
    }
    const results = new Map<string, Map<string, number>>();
    for (const [label, byServer] of samples) {
      results.set(label, new Map([...byServer].map(([name, values]) => [name, median(values)])));
    }
    const section = renderSection(results, names, {
      runtimeSeconds,
      reps,
      sizeMib,
      syncIoMax,
      date: new Date().toISOString().slice(0, 10),
      load: [loadBefore, os.loadavg()[0]],
    });
    process.stdout.write('\n' + section + '\n');
    if (!args.includes('--no-docs')) await updateDocs(section);
  } finally {
    for (const server of servers) server.process.kill('SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 300));
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
