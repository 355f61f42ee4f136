// Thin-pool engine benchmarks (issue: engine). Each row compares the engine with itself under a
// harder condition in the same run: snapshot and read latency at depth 1 vs 1000 and at 1 GiB vs
// 64 GiB mapped, delta time against the number of changed blocks, write throughput with and
// without a held metadata snapshot, and resident memory with over a million mapped blocks.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Pool } from '../../src/thin/pool';
import { mappedPool, revertLatencies } from './pool-fixtures';
import { machineLine, median, percentile, updateBenchmarkSection } from '../report';
import { log } from '../../src/log';

log.level = 'warn';

const BLOCK = 64 * 1024;
const quick = process.argv.includes('--quick');
const BIG_BLOCKS = quick ? 200_000 : 1_048_576; // 64 GiB of 64 KiB blocks
const SMALL_BLOCKS = 16_384; // 1 GiB
const DEPTH = quick ? 200 : 1000;

const ms = (t0: number) => performance.now() - t0;
const fmt = (x: number, digits = 2) => x.toFixed(digits);

async function snapshotLatencies(
  pool: Pool,
  origin: number,
  count: number,
  firstId: number,
): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    await pool.createSnap(firstId + i, origin);
    out.push(ms(t0));
  }
  return out;
}

async function readLatencies(pool: Pool, id: number, blocks: number, count: number): Promise<number[]> {
  const dev = pool.device(id);
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const offset = ((i * 7919) % blocks) * BLOCK + ((i * 13) % 16) * 4096;
    const t0 = performance.now();
    await dev.read(offset, 4096);
    out.push(ms(t0));
  }
  return out;
}

async function writeThroughput(pool: Pool, id: number, bytes: number): Promise<number> {
  const dev = pool.device(id);
  const chunk = Buffer.alloc(256 * 1024, 0x5a);
  const t0 = performance.now();
  for (let off = 0; off < bytes; off += chunk.length) await dev.write(off, chunk);
  await pool.flush();
  return bytes / 2 ** 20 / (ms(t0) / 1000);
}

/** Opens the pool in a fresh process, reads 100,000 random 4 KiB blocks, returns its RSS. */
async function childRss(dir: string, blocks: number): Promise<number> {
  const { execFile } = await import('node:child_process');
  const script = `
    const { Pool } = require(${JSON.stringify(path.resolve(__dirname, '../../src/thin/pool.js'))});
    (async () => {
      const pool = await Pool.open(${JSON.stringify(dir)}, { commitIntervalMs: 0, skipVerify: true });
      const dev = pool.device(0);
      for (let i = 0; i < 100000; i++) await dev.read(((i * 7919) % ${blocks}) * ${BLOCK}, 4096);
      process.stdout.write(String(process.memoryUsage().rss));
      await pool.close();
    })();`;
  const out = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, ['-e', script], (e, stdout) => (e ? reject(e) : resolve(stdout))),
  );
  return Number(out) / 2 ** 20;
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(process.env.BENCH_DIR ?? os.tmpdir(), 'thinpool-bench-'));
  const rows: string[] = [];
  const verdicts: string[] = [];
  try {
    // 1. Snapshot latency: 1 GiB vs 64 GiB mapped.
    const small = await mappedPool(path.join(work, 'small'), SMALL_BLOCKS);
    const big = await mappedPool(path.join(work, 'big'), BIG_BLOCKS);
    const snapSmall = await snapshotLatencies(small, 0, 60, 10);
    const snapBig = await snapshotLatencies(big, 0, 60, 10);
    const sizeRatio = median(snapBig) / median(snapSmall);
    rows.push(
      `| snapshot latency, ${(SMALL_BLOCKS * 64) / 1024 / 1024} GiB mapped | p50 ${fmt(median(snapSmall))} ms, p99 ${fmt(percentile(snapSmall, 99))} ms | |`,
    );
    rows.push(
      `| snapshot latency, ${fmt((BIG_BLOCKS * 64) / 1024 / 1024, 0)} GiB mapped | p50 ${fmt(median(snapBig))} ms, p99 ${fmt(percentile(snapBig, 99))} ms | ${fmt(sizeRatio)}× |`,
    );

    // 1b. Revert latency at the same two sizes (device 0 back to its first snapshot, id 10).
    const revertSmall = await revertLatencies(small, 0, 10, SMALL_BLOCKS, 60);
    const revertBig = await revertLatencies(big, 0, 10, BIG_BLOCKS, 60);
    rows.push(
      `| revert latency, ${(SMALL_BLOCKS * 64) / 1024 / 1024} GiB mapped | p50 ${fmt(median(revertSmall))} ms, p99 ${fmt(percentile(revertSmall, 99))} ms | |`,
    );
    rows.push(
      `| revert latency, ${fmt((BIG_BLOCKS * 64) / 1024 / 1024, 0)} GiB mapped | p50 ${fmt(median(revertBig))} ms, p99 ${fmt(percentile(revertBig, 99))} ms | ${fmt(median(revertBig) / median(revertSmall))}× |`,
    );

    // 2. Depth: a chain of snapshots of snapshots, each written to once. Then, with the pool
    // unchanged, alternate between the shallowest and the deepest device, so that the device
    // count and the catalogue size are the same for both and only depth differs.
    const chainStart = 100;
    let prev = 0;
    for (let d = 1; d <= DEPTH; d++) {
      await small.createSnap(chainStart + d, prev);
      await small
        .device(chainStart + d)
        .write(((d * 31) % SMALL_BLOCKS) * BLOCK, Buffer.alloc(4096, d & 0xff));
      prev = chainStart + d;
    }
    await small.commit();
    const shallow = chainStart + 1;
    const deep = chainStart + DEPTH;
    const d1: number[] = [];
    const dN: number[] = [];
    for (let i = 0; i < 60; i++) {
      for (const [origin, out] of [
        [shallow, d1],
        [deep, dN],
      ] as const) {
        const t0 = performance.now();
        await small.createSnap(20_000 + 2 * i + (origin === deep ? 1 : 0), origin);
        out.push(ms(t0));
      }
    }
    const depthRatio = median(dN) / median(d1);
    rows.push(
      `| snapshot latency of a depth-1 device | p50 ${fmt(median(d1))} ms, p99 ${fmt(percentile(d1, 99))} ms | |`,
    );
    rows.push(
      `| snapshot latency of a depth-${DEPTH} device | p50 ${fmt(median(dN))} ms, p99 ${fmt(percentile(dN, 99))} ms | ${fmt(depthRatio)}× |`,
    );
    const readShallow: number[] = [];
    const readDeep: number[] = [];
    for (let round = 0; round < 10; round++) {
      readShallow.push(...(await readLatencies(small, shallow, SMALL_BLOCKS, 500)));
      readDeep.push(...(await readLatencies(small, deep, SMALL_BLOCKS, 500)));
    }
    const readRatio = median(readDeep) / median(readShallow);
    rows.push(
      `| 4 KiB read latency, depth 1 | p50 ${fmt(median(readShallow) * 1000, 0)} µs, p99 ${fmt(percentile(readShallow, 99) * 1000, 0)} µs | |`,
    );
    rows.push(
      `| 4 KiB read latency, depth ${DEPTH} | p50 ${fmt(median(readDeep) * 1000, 0)} µs, p99 ${fmt(percentile(readDeep, 99) * 1000, 0)} µs | ${fmt(readRatio)}× |`,
    );

    // 3. Delta time against changed blocks, on the big device and a snapshot of it. Changes come
    // in runs of 16 blocks (as writes cluster); a scattered pattern costs up to one leaf each.
    const bigGiB = fmt((BIG_BLOCKS * 64) / 1024 / 1024, 0);
    for (const [pattern, place] of [
      ['clustered (runs of 16)', (i: number) => (Math.floor(i / 16) * 4099 * 16 + (i % 16)) % BIG_BLOCKS],
      ['scattered', (i: number) => (i * 9973) % BIG_BLOCKS],
    ] as const) {
      const deltaTimes: [number, number][] = [];
      for (const n of [0, 1000, 10_000, 100_000].filter((k) => k < BIG_BLOCKS / 4)) {
        const id = 5000 + n;
        await big.createSnap(id, 0);
        const md = big.metadata;
        const touched = new Set<number>();
        for (let i = 0; i < n; i++) {
          const v = place(i);
          touched.add(v);
          md.insertMapping(id, v, md.dataSm.counts.allocate()!);
        }
        await big.commit();
        const t0 = performance.now();
        const ranges = await big.delta(0, id);
        const t = ms(t0);
        const changed = ranges.reduce((s, r) => s + r.length, 0);
        if (changed !== touched.size)
          throw new Error(`delta found ${changed} changed blocks, expected ${touched.size}`);
        deltaTimes.push([n, t]);
        await big.deleteDevice(id);
      }
      const perBlock = deltaTimes.filter(([n]) => n >= 1000).map(([n, t]) => (t / n) * 1000);
      rows.push(
        `| delta of ${bigGiB} GiB devices, ${pattern} | ${deltaTimes.map(([n, t]) => `${n}: ${fmt(t)} ms`).join('; ')} | ` +
          `${fmt(Math.min(...perBlock))}–${fmt(Math.max(...perBlock))} µs per changed block |`,
      );
    }

    // 4. Write throughput (provisioning 256 KiB writes) with and without a held metadata snapshot.
    const tputBytes = (quick ? 64 : 256) * 2 ** 20;
    await small.createThin(9000, tputBytes);
    await small.createThin(9001, tputBytes);
    const without = await writeThroughput(small, 9000, tputBytes);
    await small.reserveMetadataSnap();
    const withSnap = await writeThroughput(small, 9001, tputBytes);
    await small.releaseMetadataSnap();
    rows.push(`| write throughput, no metadata snapshot | ${fmt(without, 0)} MiB/s | |`);
    rows.push(
      `| write throughput, metadata snapshot held | ${fmt(withSnap, 0)} MiB/s | ${fmt(withSnap / without)}× |`,
    );

    // 5. Memory of a process that opens the pool with over a million mapped blocks (default
    // options, bounded metadata cache) and reads across the whole device.
    await big.close();
    const rssMiB = await childRss(path.join(work, 'big'), BIG_BLOCKS);
    rows.push(
      `| RSS of a process with a pool of ${BIG_BLOCKS.toLocaleString('en')} mapped blocks, after 100,000 random reads | ${fmt(rssMiB, 0)} MiB | |`,
    );

    verdicts.push(
      `snapshot latency flat in mapped size: ${sizeRatio <= 1.1 ? 'yes' : 'NO'} (${fmt(sizeRatio)}×); in depth: ${depthRatio <= 1.1 ? 'yes' : 'NO'} (${fmt(depthRatio)}×)`,
      `snapshot p99 under 5 ms: ${Math.max(percentile(snapBig, 99), percentile(dN, 99)) < 5 ? 'yes' : 'NO'}`,
      `read latency flat in depth: ${readRatio <= 1.1 ? 'yes' : 'NO'} (${fmt(readRatio)}×)`,
      `write throughput with a held metadata snapshot ≥ 0.9×: ${withSnap / without >= 0.9 ? 'yes' : 'NO'} (${fmt(withSnap / without)}×)`,
      `RSS under 256 MiB: ${rssMiB < 256 ? 'yes' : 'NO'} (${fmt(rssMiB, 0)} MiB)`,
    );
    await small.close();
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  const section = [
    '## Thin-pool engine',
    '',
    `Run with \`npm run bench\` (${quick ? 'quick mode' : 'full size'}), ${new Date().toISOString().slice(0, 10)}, ${machineLine()}.`,
    'Pools are file-backed on the local disk; every snapshot is a full transaction (intent, two',
    'metadata syncs, catalogue). Ratios compare the harder case with the easier one in the same run.',
    '',
    '| measurement | result | ratio |',
    '| --- | --- | --- |',
    ...rows,
    '',
    ...verdicts.map((v) => `- ${v}`),
  ].join('\n');
  process.stdout.write(section + '\n');
  if (!process.argv.includes('--no-docs')) updateBenchmarkSection(section);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
