// Backup benchmark: the driver (`thinpool serve --role controller`) and the backup CLI run as two
// processes, as in a cluster. Measures plain NBD sequential reads of a snapshot's export (fio's
// nbd engine, our client with no storage, and our client hashing every byte), full backups of the
// same snapshot, and incremental backups after N MiB of changes; from SHA-256's cost on this CPU
// it computes the best throughput any backup could reach here. Writes "## Backup" in
// docs/benchmarks.md (the hand-written "## Backup: what bounds it" after it is left alone).
//
//   bash bench/backup/run.sh [--data-mib N] [--reps N] [--no-docs]
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { CsiClient } from '../../src/backup/csi-client';
import { HashPool } from '../../src/backup/hash-pool';
import { NbdConnectionPool, parseNbdEndpoint } from '../../src/nbd/client';
import { machineLine, median, repoRoot, updateBenchmarkSection } from '../report';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const cli = path.join(repoRoot, 'dist/cli/main.js');

function option(args: string[], flag: string, fallback: string): string {
  const at = args.indexOf(flag);
  return at >= 0 && args[at + 1] !== undefined ? args[at + 1] : fallback;
}

const mbps = (bytes: number, ms: number) => bytes / MiB / (ms / 1000);

/** CPU seconds (user + system) of a process, or of the children it has reaped, from /proc. */
function cpuSeconds(pid: number | 'self', children = false): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields[0] is field 3 (state)
  const [user, system] = children ? [fields[13], fields[14]] : [fields[11], fields[12]];
  return (Number(user) + Number(system)) / 100; // USER_HZ is 100 on Linux
}

/** CPU seconds per GiB moved: the client program's (a child of ours) and the driver's. */
interface CpuCost {
  client: number;
  driver: number;
}
let driverPid = 0;

/**
 * Runs `fn` and charges the CPU it took per GiB: the client is a child program of ours, or this
 * process itself (`inProcess`, for our own client; its worker threads count too).
 */
async function withCpu<T>(
  bytes: (value: T) => number,
  fn: () => Promise<T>,
  inProcess = false,
): Promise<[T, CpuCost]> {
  const client = () => (inProcess ? cpuSeconds('self') : cpuSeconds('self', true));
  const c0 = client();
  const d0 = cpuSeconds(driverPid);
  const value = await fn();
  const gib = bytes(value) / (1024 * MiB);
  return [value, { client: (client() - c0) / gib, driver: (cpuSeconds(driverPid) - d0) / gib }];
}

/** CPU seconds per GiB of SHA-256 on one thread here (node:crypto over 1 MiB pieces). */
function sha256CpuPerGiB(): number {
  const data = randomBytes(MiB);
  const before = process.cpuUsage();
  for (let i = 0; i < 1024; i++) createHash('sha256').update(data).digest();
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1e6;
}

/**
 * Reads `bytes` of the export sequentially, 16 × 1 MiB in flight over the pool's connections;
 * with `hash`, a worker also hashes every MiB (as a backup does, minus storing). MiB/s.
 */
async function readAll(pool: NbdConnectionPool, bytes: number, hash: boolean): Promise<number> {
  const lanes = 16;
  const slab = new SharedArrayBuffer(lanes * MiB);
  const hashes = hash ? new HashPool(slab, 1) : undefined;
  const t0 = performance.now();
  let next = 0;
  try {
    await Promise.all(
      Array.from({ length: lanes }, async (_, lane) => {
        const buffer = Buffer.from(slab, lane * MiB, MiB);
        while (next < bytes) {
          const at = next;
          next += MiB;
          const length = Math.min(MiB, bytes - at);
          await pool.read(at, length, buffer);
          if (hashes) await hashes.digest([[lane * MiB, length]]);
        }
      }),
    );
    return mbps(bytes, performance.now() - t0);
  } finally {
    await hashes?.close();
  }
}

/** Median CPU seconds per GiB, client and driver together. */
const cpuPerGiB = (c: CpuCost[]) => median(c.map((x) => x.client + x.driver));

/** MiB/s that the machine's CPUs could sustain at this cost, if nothing else ran. */
const ceiling = (c: CpuCost[]) => (os.availableParallelism() * 1024) / cpuPerGiB(c);

/** The phases of the run with the median duration. */
function phaseCell(runs: BackupSummary[]): string {
  if (!runs.length) return '';
  const p = [...runs].sort((a, b) => a.durationMs - b.durationMs)[Math.floor(runs.length / 2)].phases;
  return `${p.setupMs} / ${p.copyMs} / ${p.finishMs}`;
}

const cpuCell = (c: CpuCost[]) =>
  `${median(c.map((x) => x.client)).toFixed(2)} + ${median(c.map((x) => x.driver)).toFixed(2)}`;
const fmt = (x: number) => x.toFixed(0);

interface BackupSummary {
  backupId: string;
  rangeBytes: number;
  bytesRead: number;
  bytesStored: number;
  durationMs: number;
  phases: { setupMs: number; copyMs: number; finishMs: number };
}

async function backup(endpoint: string, args: string[]): Promise<BackupSummary> {
  const { stdout } = await run(
    process.execPath,
    [cli, 'backup', 'create', '--driver', endpoint, '--json', '--quiet', ...args],
    {
      maxBuffer: 16 * MiB,
    },
  );
  const summary = JSON.parse(stdout) as BackupSummary;
  process.stderr.write(
    `  backup ${args.join(' ')}: ${summary.durationMs} ms ${JSON.stringify(summary.phases)}\n`,
  );
  return summary;
}

async function waitReady(csi: CsiClient, driver: ChildProcess): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (driver.exitCode !== null) throw new Error(`the driver exited with ${driver.exitCode}`);
    try {
      await csi.listVolumeIds();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error('the driver did not become ready');
}

/** Semi-compressible data: each 64 KiB block is half random, half a repeated pattern. */
function blockData(bytes: number): Buffer {
  const out = Buffer.alloc(bytes, 'thinpool backup benchmark ');
  for (let at = 0; at < bytes; at += 64 * 1024) randomBytes(32 * 1024).copy(out, at);
  return out;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const dataBytes = Number(option(args, '--data-mib', '768')) * MiB;
  const reps = Number(option(args, '--reps', '3'));
  const volumeBytes = dataBytes + 256 * MiB;
  const dir = fs.mkdtempSync(path.join(option(args, '--dir', os.tmpdir()), 'backup-bench-'));
  const endpoint = path.join(dir, 'csi.sock');
  const driver = spawn(
    process.execPath,
    [
      cli,
      'serve',
      '--role',
      'controller',
      '--endpoint',
      endpoint,
      '--pool-dir',
      path.join(dir, 'pool'),
      '--pool-size',
      `${Math.ceil((volumeBytes * 3) / 1024 / MiB) + 1}G`,
      '--nbd-port',
      '0',
      '--node-id',
      'bench',
    ],
    { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, THINPOOL_LOG_LEVEL: 'warn' } },
  );
  driverPid = driver.pid!;
  const csi = new CsiClient(endpoint);
  try {
    await waitReady(csi, driver);
    // The source volume, written over NBD, and its first snapshot.
    const source = await csi.createVolume({ name: 'bench-source', sizeBytes: volumeBytes, readOnly: false });
    const grant = await csi.publish(source.volumeId, 'bench-writer', false);
    const writer = await NbdConnectionPool.open(parseNbdEndpoint(grant.endpoint), grant.exportName, 2);
    for (let at = 0; at < dataBytes; at += 16 * MiB)
      await writer.write(at, blockData(Math.min(16 * MiB, dataBytes - at)));
    await writer.flush();
    let snapshot = await csi.createSnapshot(source.volumeId, 'bench-0');
    process.stderr.write(`wrote ${dataBytes / MiB} MiB, snapshot ${snapshot}\n`);
    await run('sync', []); // no measurement pays for the writeback of the data just written

    // Plain sequential NBD reads of the same snapshot, through a read-only volume from it.
    const plain = await csi.createVolume({
      name: 'bench-plain',
      sizeBytes: volumeBytes,
      fromSnapshot: snapshot,
      readOnly: true,
    });
    const pub = await csi.publish(plain.volumeId, 'bench-reader', true);
    const address = parseNbdEndpoint(pub.endpoint);
    const uri = 'host' in address ? `nbd://${address.host}:${address.port}/${pub.exportName}` : '';
    const fioRates: number[] = [];
    const clientRates: number[] = [];
    const clientCpu: CpuCost[] = [];
    const hashedRates: number[] = [];
    const hashedCpu: CpuCost[] = [];
    const fullRates: number[] = [];
    const memRates: number[] = [];
    const shm = fs.existsSync('/dev/shm') ? fs.mkdtempSync('/dev/shm/backup-bench-') : undefined;
    const fullRuns: BackupSummary[] = [];
    const fioCpu: CpuCost[] = [];
    const fullCpu: CpuCost[] = [];
    const memCpu: CpuCost[] = [];
    const memRuns: BackupSummary[] = [];
    for (let rep = 0; rep < reps; rep++) {
      const [{ stdout }, fioCost] = await withCpu(
        () => dataBytes,
        () =>
          run(
            'fio',
            [
              '--name=seq',
              '--ioengine=nbd',
              `--uri=${uri}`,
              '--rw=read',
              '--bs=1M',
              '--iodepth=16',
              `--size=${dataBytes / MiB}M`,
              '--output-format=json',
            ],
            { maxBuffer: 16 * MiB },
          ),
      );
      fioCpu.push(fioCost);
      const fio = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: { read: { bw_bytes: number } }[] };
      fioRates.push(fio.jobs[0].read.bw_bytes / MiB);

      const pool = await NbdConnectionPool.open(address, pub.exportName, 4);
      for (const [hash, rates, cpu] of [
        [false, clientRates, clientCpu],
        [true, hashedRates, hashedCpu],
      ] as const) {
        const [rate, cost] = await withCpu(
          () => dataBytes,
          () => readAll(pool, dataBytes, hash),
          true,
        );
        rates.push(rate);
        cpu.push(cost);
      }
      await pool.close();

      const repo = path.join(dir, `repo-full-${rep}`);
      const [full, fullCost] = await withCpu(
        (r) => r.rangeBytes,
        () => backup(endpoint, ['--snapshot', snapshot, '--repo', repo]),
      );
      fullCpu.push(fullCost);
      fullRuns.push(full);
      fullRates.push(mbps(full.rangeBytes, full.durationMs));
      if (shm) {
        const [mem, memCost] = await withCpu(
          (r) => r.rangeBytes,
          () => backup(endpoint, ['--snapshot', snapshot, '--repo', path.join(shm, `repo-${rep}`)]),
        );
        memCpu.push(memCost);
        memRuns.push(mem);
        memRates.push(mbps(mem.rangeBytes, mem.durationMs));
        fs.rmSync(path.join(shm, `repo-${rep}`), { recursive: true, force: true });
      }
      process.stderr.write(
        `rep ${rep}: fio ${fmt(fioRates[rep])} MiB/s, client ${fmt(clientRates[rep])} MiB/s, full backup ${fmt(fullRates[rep])} MiB/s\n`,
      );
    }
    if (shm) fs.rmSync(shm, { recursive: true, force: true });
    // What the repository's disk takes: sequential writes with one fdatasync at the end.
    const dd = await run(
      'dd',
      [
        'if=/dev/zero',
        `of=${path.join(dir, 'dd.img')}`,
        'bs=1M',
        `count=${dataBytes / MiB}`,
        'conv=fdatasync',
      ],
      {},
    );
    const ddRate = Number(
      /([\d.]+) s, /.exec(dd.stderr)?.[1] ? dataBytes / MiB / Number(/([\d.]+) s, /.exec(dd.stderr)![1]) : 0,
    );
    fs.rmSync(path.join(dir, 'dd.img'));
    await csi.unpublish(plain.volumeId, 'bench-reader');
    await csi.deleteVolume(plain.volumeId);

    const [deflated, deflateCpu] = await withCpu(
      (r) => r.rangeBytes,
      () =>
        backup(endpoint, [
          '--snapshot',
          snapshot,
          '--repo',
          path.join(dir, 'repo-deflate'),
          '--compress',
          'deflate',
        ]),
    );

    // Incrementals after N MiB of random 64 KiB block writes.
    const repo = path.join(dir, 'repo-full-0');
    const incrementals: { changed: number; s: BackupSummary; cpu: CpuCost }[] = [];
    for (const changedMiB of [16, 64, 256]) {
      const blocks = new Set<number>();
      while (blocks.size < (changedMiB * MiB) / (64 * 1024))
        blocks.add(Math.floor(Math.random() * (volumeBytes / (64 * 1024))));
      await Promise.all([...blocks].map((b) => writer.write(b * 64 * 1024, blockData(64 * 1024))));
      await writer.flush();
      const next = await csi.createSnapshot(source.volumeId, `bench-${changedMiB}`);
      const [s, cpu] = await withCpu(
        (r) => r.rangeBytes,
        () => backup(endpoint, ['--snapshot', next, '--base', snapshot, '--repo', repo]),
      );
      incrementals.push({ changed: changedMiB * MiB, s, cpu });
      snapshot = next;
      process.stderr.write(
        `incremental after ${changedMiB} MiB: ${fmt(mbps(s.rangeBytes, s.durationMs))} MiB/s\n`,
      );
    }
    await writer.close();

    const fioMedian = median(fioRates);
    const sha = sha256CpuPerGiB();
    // The cheaper of the two plain readers: a backup must read at least as dearly as that.
    const readPerGiB = Math.min(cpuPerGiB(fioCpu), cpuPerGiB(clientCpu));
    const shaCeiling = (os.availableParallelism() * 1024) / (readPerGiB + sha);
    const fullMedian = median(fullRates);
    const lines = [
      '## Backup',
      '',
      `\`bash bench/backup/run.sh\` on ${machineLine()}, ${new Date().toISOString().slice(0, 10)}. The driver`,
      '(`thinpool serve --role controller`) and `thinpool backup create` run as separate processes; the',
      `snapshot holds ${dataBytes / MiB} MiB of data (half random, half repetitive per 64 KiB block) in a`,
      `${volumeBytes / MiB} MiB volume. Repository on the local disk, no compression unless stated; median of ${reps}.`,
      'Backup throughput counts the bytes the metadata service listed over the whole command run',
      '(CSI calls, temporary volume, NBD reads, SHA-256, pack files with fsync, manifest). CPU is',
      'user + system seconds per GiB listed, of the client program (fio, or the whole backup process',
      "with its start) and of the driver; phases are the backup's own: CSI calls and connections",
      'before the first read / reading, hashing and storing / sealing the last pack, manifest, cleanup.',
      '',
      '| what | MiB/s | vs fio seq read | CPU s/GiB client + driver | phases ms |',
      '| --- | ---: | ---: | ---: | ---: |',
      `| fio nbd engine, seq read 1M qd16 (same snapshot export) | ${fmt(fioMedian)} | 1.00 | ${cpuCell(fioCpu)} | |`,
      `| our NBD client alone, 4 connections × 16 × 1 MiB | ${fmt(median(clientRates))} | ${(median(clientRates) / fioMedian).toFixed(2)} | ${cpuCell(clientCpu)} | |`,
      `| our NBD client + SHA-256 of every MiB on a worker, nothing stored | ${fmt(median(hashedRates))} | ${(median(hashedRates) / fioMedian).toFixed(2)} | ${cpuCell(hashedCpu)} | |`,
      `| full backup, repository in tmpfs (/dev/shm) | ${memRates.length ? fmt(median(memRates)) : 'n/a'} | **${memRates.length ? (median(memRates) / fioMedian).toFixed(2) : 'n/a'}** | ${memCpu.length ? cpuCell(memCpu) : ''} | ${phaseCell(memRuns)} |`,
      `| full backup, repository on the local disk | ${fmt(fullMedian)} | **${(fullMedian / fioMedian).toFixed(2)}** | ${cpuCell(fullCpu)} | ${phaseCell(fullRuns)} |`,
      `| (the local disk: dd 1M writes + fdatasync, the ceiling for the line above) | ${fmt(ddRate)} | ${(ddRate / fioMedian).toFixed(2)} | | |`,
      `| full backup, local disk, deflate (stored ${fmt(deflated.bytesStored / MiB)} of ${fmt(deflated.rangeBytes / MiB)} MiB) | ${fmt(mbps(deflated.rangeBytes, deflated.durationMs))} | ${(mbps(deflated.rangeBytes, deflated.durationMs) / fioMedian).toFixed(2)} | ${cpuCell([deflateCpu])} | ${phaseCell([deflated])} |`,
      ...incrementals.map(
        ({ changed, s, cpu }) =>
          `| incremental after ${changed / MiB} MiB of random 64 KiB writes | ${fmt(mbps(s.rangeBytes, s.durationMs))} | ${(mbps(s.rangeBytes, s.durationMs) / fioMedian).toFixed(2)} | ${cpuCell([cpu])} | ${phaseCell([s])} |`,
      ),
      '',
      `CPU ceilings (${os.availableParallelism()} CPUs ÷ CPU per GiB, if nothing else ran): fio ${fmt(ceiling(fioCpu))} MiB/s, ` +
        `full backup to tmpfs ${memCpu.length ? fmt(ceiling(memCpu)) : 'n/a'} MiB/s, to the local disk ${fmt(ceiling(fullCpu))} MiB/s.`,
      '',
      `SHA-256 on this CPU: ${sha.toFixed(2)} CPU-s/GiB (node:crypto, one thread). Whatever else it does, a`,
      'backup reads every byte (at best as cheaply as the cheaper plain reader above, client + driver)',
      `and hashes it: ${os.availableParallelism()} CPUs ÷ (${readPerGiB.toFixed(2)} + ${sha.toFixed(2)}) CPU-s/GiB = ${fmt(shaCeiling)} MiB/s,`,
      `**${(shaCeiling / fioMedian).toFixed(2)}× of fio** at most in this run, before storing a byte.`,
      '',
      'Incremental size versus changed data:',
      '',
      '| changed | ranges listed | read from the export | stored | read / changed |',
      '| ---: | ---: | ---: | ---: | ---: |',
      ...incrementals.map(
        ({ changed, s }) =>
          `| ${changed / MiB} MiB | ${fmt(s.rangeBytes / MiB)} MiB | ${fmt(s.bytesRead / MiB)} MiB | ${fmt(s.bytesStored / MiB)} MiB | ${(s.bytesRead / changed).toFixed(3)} |`,
      ),
      '',
      `Full backups read ${fmt(median(fullRuns.map((r) => r.bytesRead)) / MiB)} MiB for ${dataBytes / MiB} MiB of data.`,
      '',
    ];
    const section = lines.join('\n');
    process.stdout.write(section + '\n');
    if (!args.includes('--no-docs')) updateBenchmarkSection(section);
  } finally {
    csi.close();
    driver.kill('SIGTERM');
    await new Promise((r) => driver.once('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: Error) => {
  process.stderr.write(`${e.stack ?? e.message}\n`);
  process.exit(1);
});
