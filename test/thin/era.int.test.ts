// Era tracking of a pool's data blocks in the dm-era format: era_check accepts what the engine
// writes, era_invalidate reads the same "written since era N" as the engine answers, and the
// marks survive a killed process, a grown pool and a revert.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { registerPoolMetrics } from '../../src/metrics/pool-metrics';
import { registry } from '../../src/metrics/registry';
import { EraMetadata } from '../../src/thin/era/era-metadata';
import { Pool } from '../../src/thin/pool';
import { poolPaths } from '../../src/thin/pool-files';
import { thinpool } from '../helpers/cli';
import { makeTempDir } from '../helpers/tmp';
import { thinCheckBoth } from '../helpers/thin-oracle';
import { ThinToolVersion, runTool, thinTool } from '../helpers/tools';

const MiB = 2 ** 20;
const BLOCK = 64 * 1024;
const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

let poolNo = 0;
async function newPool(dataMiB = 64): Promise<{ dir: string; pool: Pool }> {
  const dir = path.join(tmp.dir, `pool-${poolNo++}`);
  const pool = await Pool.create(dir, { dataSizeBytes: dataMiB * MiB, era: true }, { commitIntervalMs: 0 });
  await pool.createThin(1, 16 * MiB);
  return { dir, pool };
}

async function writeBlocks(pool: Pool, id: number, vblocks: number[], byte = 0x5a): Promise<void> {
  for (const v of vblocks) await pool.device(id).write(v * BLOCK, Buffer.alloc(BLOCK, byte));
}

function dataBlockOf(pool: Pool, id: number, vblock: number): number {
  return pool.metadata.lookupMapping(id, vblock)!.dataBlock;
}

const vblocksOf = (ranges: { begin: number; length: number }[]) =>
  ranges.flatMap((r) => Array.from({ length: r.length }, (_, i) => r.begin + i));

/** The blocks an era_invalidate XML lists. */
function parseInvalidate(xml: string): number[] {
  const out: number[] = [];
  for (const m of xml.matchAll(/<block block="(\d+)"\/>|<range begin="(\d+)" end\s*=\s*"(\d+)"\/>/g)) {
    if (m[1] !== undefined) out.push(Number(m[1]));
    else for (let b = Number(m[2]); b < Number(m[3]); b++) out.push(b);
  }
  return out;
}

async function eraTool(
  name: 'era_check' | 'era_invalidate' | 'era_dump',
  version: ThinToolVersion,
  args: string[],
) {
  const r = await runTool(thinTool(name, version), args);
  return { ...r, output: r.stdout + r.stderr };
}

describe('era metadata in the dm-era format', () => {
  test('era_check accepts it and era_invalidate lists what the engine says was written', async () => {
    const { dir, pool } = await newPool();
    await writeBlocks(pool, 1, [0, 1, 5]);
    const snap = await pool.createSnap(2, 1);
    expect(snap.era).toBe(pool.era!.currentEra);
    const since = snap.era!;
    await writeBlocks(pool, 1, [1, 7, 20], 0x77); // 1 breaks sharing with the snapshot
    expect(vblocksOf(await pool.writtenSinceEra(1, since))).toEqual([1, 7, 20]);
    expect(await pool.writtenSinceEra(2, since)).toEqual([]);
    expect(vblocksOf(await pool.writtenSinceEra(1, 1))).toEqual([0, 1, 5, 7, 20]);
    const want = [1, 7, 20].map((v) => dataBlockOf(pool, 1, v)).sort((a, b) => a - b);
    pool.era!.checkpoint(); // era_invalidate reads archived eras only
    await pool.close();

    const era = poolPaths(dir).era.metadata;
    for (const v of ['0.9', '1.1'] as const) {
      const check = await eraTool('era_check', v, [era]);
      expect({ v, code: check.code, out: check.output }).toEqual({ v, code: 0, out: check.output });
      const inv = await eraTool('era_invalidate', v, ['--written-since', String(since), era]);
      expect(inv.code).toBe(0);
      expect(parseInvalidate(inv.stdout)).toEqual(want);
    }
    const dump = await eraTool('era_dump', '0.9', [era]);
    expect(dump.code).toBe(0);
    expect(dump.stdout).toMatch(/<superblock [^>]*nr_blocks="1024"/);
  });

  test('five eras of random writes: era_invalidate for every era and era_dump match a model', async () => {
    const { dir, pool } = await newPool();
    const model = new Map<number, number>(); // data block → era of its last write
    const eras: number[] = [];
    let seed = 7;
    const rand = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
    for (let round = 0; round < 5; round++) {
      const era = pool.era!.currentEra;
      eras.push(era);
      for (let i = 0; i < 40; i++) {
        const v = rand(256);
        await pool.device(1).write(v * BLOCK + rand(16) * 4096, Buffer.alloc(4096, round + 1));
        model.set(dataBlockOf(pool, 1, v), era);
      }
      // Alternate plain checkpoints and snapshots (whose later writes copy to new blocks).
      if (round % 2) await pool.createSnap('auto', 1);
      else pool.era!.checkpoint();
    }
    await pool.close();
    const file = poolPaths(dir).era.metadata;
    const expected = (k: number) =>
      [...model]
        .filter(([, e]) => e >= k)
        .map(([b]) => b)
        .sort((a, b) => a - b);
    for (const k of eras) {
      for (const v of ['0.9', '1.1'] as const) {
        const inv = await eraTool('era_invalidate', v, ['--written-since', String(k), file]);
        expect({ k, v, blocks: parseInvalidate(inv.stdout) }).toEqual({ k, v, blocks: expected(k) });
      }
    }
    // era_dump: the era array and the writesets give each block's last era, as the model does.
    const dump = (await eraTool('era_dump', '0.9', [file])).stdout;
    const dumped = new Map<number, number>();
    for (const m of dump.matchAll(/<era block="(\d+)" era="(\d+)"\/>/g))
      if (Number(m[2]) > 0) dumped.set(Number(m[1]), Number(m[2]));
    for (const ws of dump.matchAll(/<writeset era="(\d+)"[^>]*>([\s\S]*?)<\/writeset>/g))
      for (const m of ws[2].matchAll(/<bit block="(\d+)" value="true"\/>/g))
        dumped.set(Number(m[1]), Math.max(dumped.get(Number(m[1])) ?? 0, Number(ws[1])));
    expect(new Map([...dumped].sort((a, b) => a[0] - b[0]))).toEqual(
      new Map([...model].sort((a, b) => a[0] - b[0])),
    );
    for (const v of ['0.9', '1.1'] as const) expect((await eraTool('era_check', v, [file])).code).toBe(0);
    // Our own view, reopened: the same blocks since each era.
    const reopened = await Pool.open(dir, { commitIntervalMs: 0 });
    for (const k of eras) {
      const bits = reopened.era!.writtenSince(k);
      const ours = [...Array(bits.length * 8).keys()].filter((b) => bits[b >> 3] & (1 << (b & 7)));
      expect({ k, ours }).toEqual({ k, ours: expected(k) });
    }
    await reopened.close();
  });

  test('a held era snapshot is what era_invalidate --metadata-snapshot reads while writes go on', async () => {
    const { dir, pool } = await newPool();
    const start = pool.era!.currentEra;
    await writeBlocks(pool, 1, [3, 4]);
    const held = pool.era!.takeSnapshot();
    expect(held.era).toBe(start);
    await writeBlocks(pool, 1, [9]);
    pool.era!.commit();
    const era = poolPaths(dir).era.metadata;
    const inv = await eraTool('era_invalidate', '0.9', [
      '--metadata-snapshot',
      '--written-since',
      String(start),
      era,
    ]);
    expect(inv.code).toBe(0);
    expect(parseInvalidate(inv.stdout)).toEqual([3, 4].map((v) => dataBlockOf(pool, 1, v)));
    expect(pool.status().era).toMatchObject({ snapshotEra: start, currentEra: start + 1 });
    registerPoolMetrics('era-test', () => pool);
    const metrics = await registry.metrics();
    expect(metrics).toContain(`thinpool_pool_era_current{pool="era-test"} ${start + 1}`);
    expect(metrics).toContain('thinpool_pool_era_blocks_marked{pool="era-test"} 1');
    pool.era!.dropSnapshot();
    expect(pool.status().era!.snapshotEra).toBeUndefined();
    await pool.close();
    expect((await eraTool('era_check', '1.1', [era])).code).toBe(0);
  });

  test('marks and checkpoints of a killed process are replayed; a lost journal marks every block', async () => {
    const { dir, pool } = await newPool();
    await writeBlocks(pool, 1, [2, 3, 4, 6]);
    await pool.close();
    let out = await runEraWorker(dir, ['3', 'snap', '6', '11']);
    const [, opened, snapEra] = /acked (\d+) snaps (\d+)/.exec(out)!.map(Number);
    // What the killed process left on disk is its last era commit, whole.
    for (const v of ['0.9', '1.1'] as const)
      expect((await eraTool('era_check', v, [poolPaths(dir).era.metadata])).code).toBe(0);
    expect(snapEra).toBe(opened + 1);
    const reopened = await Pool.open(dir, { commitIntervalMs: 0 });
    // Overwrites of owned blocks 3 and 6 left no mapping change: only the era journal knew; the
    // snapshot's checkpoint was only in the journal too.
    expect(vblocksOf(await reopened.writtenSinceEra(1, opened))).toEqual([3, 6, 11]);
    expect(vblocksOf(await reopened.writtenSinceEra(1, snapEra))).toEqual([6, 11]);
    await reopened.close();
    expect((await thinCheckBoth(poolPaths(dir).metadata)).map((r) => r.code)).toEqual([0, 0]);

    // A crash of the machine loses unsynced marks with the page cache (here: the whole journal):
    // the next open cannot tell which blocks were written, so it counts every block as written,
    // in an era no earlier than the last snapshot's even though its checkpoint never reached the
    // era metadata.
    out = await runEraWorker(dir, ['12', 'snap', 'snap', '13']);
    const lastSnap = Number(/snaps \d+,(\d+)/.exec(out)?.[1]);
    fs.truncateSync(poolPaths(dir).era.journal, 0);
    const rebooted = await Pool.open(dir, { commitIntervalMs: 0 });
    expect(vblocksOf(await rebooted.writtenSinceEra(1, lastSnap))).toEqual([2, 3, 4, 6, 11, 12, 13]);
    expect(rebooted.era!.currentEra).toBeGreaterThan(lastSnap);
    expect(vblocksOf(await rebooted.writtenSinceEra(1, rebooted.era!.currentEra))).toEqual([]);
    await rebooted.close();
    expect((await eraTool('era_check', '0.9', [poolPaths(dir).era.metadata])).code).toBe(0);
  });

  test('the era grows with the pool, and a revert counts every block as written in its era', async () => {
    const { dir, pool } = await newPool(16);
    await pool.createThin(3, 64 * MiB);
    await writeBlocks(pool, 1, [0, 1]);
    const snap = await pool.createSnap(2, 1);
    await writeBlocks(pool, 1, [0], 0x33);
    await pool.resize(48 * MiB);
    expect(pool.status().era!.nrBlocks).toBe(768);
    // Fill the old 256 blocks so the next allocation lands beyond them.
    await writeBlocks(
      pool,
      3,
      Array.from({ length: 256 }, (_, i) => i),
    );
    const beyond = pool.era!.checkpoint();
    await writeBlocks(pool, 3, [300]);
    expect(dataBlockOf(pool, 3, 300)).toBeGreaterThanOrEqual(256);
    expect(vblocksOf(await pool.writtenSinceEra(3, beyond))).toEqual([300]);

    const before = pool.era!.checkpoint();
    await pool.revertDevice(1, snap.id);
    expect(vblocksOf(await pool.writtenSinceEra(1, before))).toEqual([0, 1]);
    // A snapshot taken after the revert carries it: a reader since that era reads it all.
    const after = await pool.createSnap(4, 1);
    expect(vblocksOf(await pool.writtenSinceEra(after.id, before))).toEqual([0, 1]);
    expect(await pool.writtenSinceEra(after.id, after.era!)).toEqual([]);
    pool.era!.checkpoint();
    await pool.close();
    const era = poolPaths(dir).era.metadata;
    for (const v of ['0.9', '1.1'] as const) expect((await eraTool('era_check', v, [era])).code).toBe(0);
  });
});

describe('a failing era', () => {
  test('writes and flushes go on, answers are refused, and a pool whose era cannot open still opens', async () => {
    const dir = path.join(tmp.dir, 'era-full');
    const pool = await Pool.create(dir, { dataSizeBytes: 2048 * MiB }, { commitIntervalMs: 0 });
    await pool.createThin(1, 2048 * MiB);
    await pool.close();
    // Era metadata far too small for the pool: it runs out of space once writes spread out.
    const paths = poolPaths(dir).era;
    fs.writeFileSync(paths.metadata, '');
    fs.truncateSync(paths.metadata, 20 * 4096);
    const md = EraMetadata.format(paths.metadata, { nrBlocks: 32768, dataBlockSectors: 128 });
    md.sb.cleanShutdown = true;
    md.commit();
    md.close();

    const reopened = await Pool.open(dir, { commitIntervalMs: 0 });
    const era = reopened.era!;
    const spread = Array.from({ length: 64 }, (_, i) => i * 500);
    await writeBlocks(reopened, 1, spread);
    // The second checkpoint digests the spread marks into the era array: no room for that.
    const checkpoints = () => {
      for (let i = 0; i < 3; i++) era.checkpoint();
    };
    expect(checkpoints).toThrow(/era tracking stopped after a failure/);
    expect(era.status().failed).toMatch(/metadata/i);
    await writeBlocks(reopened, 1, [7]); // data writes are unaffected
    await reopened.flush();
    await expect(reopened.writtenSinceEra(1, 1)).rejects.toThrow(/its answers would miss writes/);
    expect(fs.existsSync(paths.journal)).toBe(false);
    await reopened.close();

    // Too small to open again: the pool opens without era tracking and says why.
    const again = await Pool.open(dir, { commitIntervalMs: 0 });
    expect(again.era).toBeUndefined();
    await writeBlocks(again, 1, [8]);
    await expect(again.writtenSinceEra(1, 1)).rejects.toThrow(
      /era metadata of .* did not open \(out of metadata space/,
    );
    await again.close();
  });
});

describe('thinpool pool era', () => {
  test('enable on an existing pool, then status, checkpoint, written-since and the held snapshot', async () => {
    const dir = path.join(tmp.dir, 'cli-pool');
    const pool = await Pool.create(dir, { dataSizeBytes: 64 * MiB }, { commitIntervalMs: 0 });
    await pool.createThin(1, 16 * MiB);
    await writeBlocks(pool, 1, [0]);
    expect(pool.era).toBeUndefined();
    await pool.close();
    expect((await thinpool(['pool', 'era', 'status', dir])).stderr).toMatch(/does not track eras/);

    const enabled = await thinpool(['pool', 'era', 'enable', dir, '--json']);
    expect(enabled.code).toBe(0);
    const first = (JSON.parse(enabled.stdout) as { currentEra: number }).currentEra;
    expect((await thinpool(['pool', 'era', 'enable', dir])).stderr).toMatch(/already tracks eras/);
    const reopened = await Pool.open(dir, { commitIntervalMs: 0 });
    const since = reopened.era!.currentEra;
    expect(since).toBeGreaterThan(first);
    await writeBlocks(reopened, 1, [4, 5]);
    await reopened.close();

    const written = await thinpool(['pool', 'era', 'written-since', dir, '1', '--era', String(since)]);
    expect(JSON.parse(written.stdout)).toEqual({ ranges: [{ begin: 4, length: 2 }] });
    const cp = await thinpool(['pool', 'era', 'checkpoint', dir, '--json']);
    expect(JSON.parse(cp.stdout).era).toBeGreaterThan(since);
    expect((await thinpool(['pool', 'era', 'take-snap', dir])).code).toBe(0);
    const status = JSON.parse((await thinpool(['pool', 'era', 'status', dir, '--json'])).stdout) as {
      snapshotEra?: number;
    };
    expect(status.snapshotEra).toBeGreaterThan(since);
    const era = poolPaths(dir).era.metadata;
    const inv = await eraTool('era_invalidate', '1.1', [
      '--metadata-snapshot',
      String((status as { metadataSnapBlock?: number }).metadataSnapBlock),
      '--written-since',
      String(since),
      era,
    ]);
    expect(inv.code).toBe(0);
    expect(parseInvalidate(inv.stdout)).toHaveLength(2);
    expect((await thinpool(['pool', 'era', 'drop-snap', dir])).code).toBe(0);
    expect((await eraTool('era_check', '0.9', [era])).code).toBe(0);
  });
});

/** Runs the era worker (writes, then SIGKILL) and returns what it printed. */
function runEraWorker(dir: string, steps: string[]): Promise<string> {
  const worker = path.join(__dirname, '../helpers/era-worker.js');
  return new Promise<string>((resolve) => {
    const child = spawn(process.execPath, [worker, dir, ...steps]);
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stdout += d.toString()));
    child.on('exit', () => resolve(stdout));
  });
}
