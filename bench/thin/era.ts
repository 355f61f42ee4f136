// Era tracking benchmark (issue: revert and era): write throughput of a pool that tracks eras
// against one that does not, in the same run, on the same disk, alternating which goes first.
// Workloads: provisioning 256 KiB writes, 4 KiB random overwrites with a flush every 64 writes
// right after a checkpoint (every block a first mark of the era), the same again (marked
// already), and snapshot latency (each snapshot is also a checkpoint with era tracking).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Pool } from '../../src/thin/pool';
import { machineLine, median, percentile, updateBenchmarkSection } from '../report';
import { log } from '../../src/log';

log.level = 'warn';

const MiB = 2 ** 20;
const quick = process.argv.includes('--quick');
const TRIALS = quick ? 3 : 5;
const SEQ_BYTES = (quick ? 64 : 256) * MiB;
const RAND_WRITES = quick ? 4096 : 16384;
const SNAPSHOTS = quick ? 50 : 200;
const fmt = (x: number, digits = 2) => x.toFixed(digits);

async function sequential(pool: Pool, id: number): Promise<number> {
  const dev = pool.device(id);
  const chunk = Buffer.alloc(256 * 1024, 0x5a);
  const t0 = performance.now();
  for (let off = 0; off < SEQ_BYTES; off += chunk.length) await dev.write(off, chunk);
  await pool.flush();
  return SEQ_BYTES / MiB / ((performance.now() - t0) / 1000);
}

/** 4 KiB writes at 16 in flight over the device's mapped blocks, a flush after every 64. */
async function randomOverwrites(pool: Pool, id: number, seed: number): Promise<number> {
  const dev = pool.device(id);
  const buf = Buffer.alloc(4096, 0x33);
  const slots = SEQ_BYTES / 4096;
  let x = seed;
  const next = () => (x = (x * 1103515245 + 12345) % 2 ** 31) % slots;
  const t0 = performance.now();
  for (let done = 0; done < RAND_WRITES; done += 64) {
    const batch: Promise<void>[] = [];
    for (let lane = 0; lane < 16; lane++)
      batch.push(
        (async () => {
          for (let i = 0; i < 4; i++) await dev.write(next() * 4096, buf);
        })(),
      );
    await Promise.all(batch);
    await pool.flush();
  }
  return (RAND_WRITES * 4096) / MiB / ((performance.now() - t0) / 1000);
}

async function snapshotLatencies(pool: Pool, origin: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < SNAPSHOTS; i++) {
    await pool.device(origin).write((i % 64) * 65536, Buffer.alloc(4096, i & 0xff));
    const t0 = performance.now();
    await pool.createSnap('auto', origin);
    out.push(performance.now() - t0);
  }
  return out;
}

interface Result {
  seq: number[];
  firstMarks: number[];
  marked: number[];
  snap: number[];
}

async function trial(dir: string, era: boolean, n: number, into: Result): Promise<void> {
  const poolDir = path.join(dir, `${era ? 'era' : 'plain'}-${n}`);
  const pool = await Pool.create(
    poolDir,
    { dataSizeBytes: 2 * SEQ_BYTES + 256 * MiB, era },
    { commitIntervalMs: 1000 },
  );
  try {
    await pool.createThin(1, SEQ_BYTES);
    into.seq.push(await sequential(pool, 1));
    pool.era?.checkpoint();
    into.firstMarks.push(await randomOverwrites(pool, 1, n + 1));
    into.marked.push(await randomOverwrites(pool, 1, n + 1000));
    await pool.createThin(2, 64 * 65536);
    into.snap.push(...(await snapshotLatencies(pool, 2)));
  } finally {
    await pool.close();
    fs.rmSync(poolDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(process.env.BENCH_DIR ?? os.tmpdir(), 'thinpool-era-bench-'));
  const plain: Result = { seq: [], firstMarks: [], marked: [], snap: [] };
  const tracked: Result = { seq: [], firstMarks: [], marked: [], snap: [] };
  try {
    for (let n = 0; n < TRIALS; n++) {
      // Alternate which goes first: the disk and the page cache warm up over a run.
      if (n % 2 === 0) {
        await trial(dir, false, n, plain);
        await trial(dir, true, n, tracked);
      } else {
        await trial(dir, true, n, tracked);
        await trial(dir, false, n, plain);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const rows: string[] = [];
  const verdicts: string[] = [];
  const tput = (label: string, a: number[], b: number[]) => {
    const ratio = median(b) / median(a);
    rows.push(`| ${label} | ${fmt(median(a), 0)} MiB/s | ${fmt(median(b), 0)} MiB/s | ${fmt(ratio)}× |`);
    verdicts.push(`${label}: with era tracking ≥ 0.9×: ${ratio >= 0.9 ? 'yes' : 'NO'} (${fmt(ratio)}×)`);
  };
  tput('256 KiB provisioning writes', plain.seq, tracked.seq);
  tput(
    '4 KiB random overwrites, flush every 64, first marks of the era',
    plain.firstMarks,
    tracked.firstMarks,
  );
  tput('4 KiB random overwrites, flush every 64, blocks already marked', plain.marked, tracked.marked);
  const lat = (v: number[]) => `p50 ${fmt(median(v))} ms, p99 ${fmt(percentile(v, 99))} ms`;
  rows.push(
    `| snapshot latency (with era tracking, also a checkpoint) | ${lat(plain.snap)} | ${lat(tracked.snap)} | ${fmt(median(tracked.snap) / median(plain.snap))}× (p50) |`,
  );
  const section = [
    '## Era tracking',
    '',
    `Run with \`bash bench/thin/era.sh\`${quick ? ' --quick' : ''}, ${new Date().toISOString().slice(0, 10)}, ${machineLine()}.`,
    `Medians of ${TRIALS} trials per pool, alternating which pool goes first; each trial is a new`,
    'file-backed pool with the periodic commit at 1 s. Ratios: with era tracking over without.',
    '',
    '| workload | without | with era tracking | ratio |',
    '| --- | --- | --- | --- |',
    ...rows,
    '',
    ...verdicts.map((v) => `- ${v}`),
    '',
  ].join('\n');
  process.stdout.write(section + '\n');
  if (!process.argv.includes('--no-docs')) updateBenchmarkSection(section);
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
