// Out of data space: ENOSPC at once in error mode; in queue mode writes wait and resume when
// the pool grows. Neither leaves the metadata damaged. Also the low-water event.
import path from 'node:path';
import { Pool } from '../../src/thin/pool';
import { OutOfDataSpaceError } from '../../src/thin/errors';
import { checkMetadata } from '../../src/thin/check';
import { makeTempDir } from '../helpers/tmp';
import { thinCheckBoth } from '../helpers/thin-oracle';

const BLOCK = 64 * 1024;
const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

async function smallPool(name: string, options: Parameters<typeof Pool.open>[1]): Promise<Pool> {
  // 32 data blocks of 64 KiB, a 64-block device: it cannot all fit.
  const pool = await Pool.create(
    path.join(tmp.dir, name),
    { dataSizeBytes: 32 * BLOCK },
    { commitIntervalMs: 0, ...options },
  );
  await pool.createThin(1, 64 * BLOCK);
  return pool;
}

async function expectClean(pool: Pool): Promise<void> {
  const metadata = path.join(pool.dir, 'metadata');
  await pool.commit();
  expect(checkMetadata(metadata).errors).toEqual([]);
  for (const r of await thinCheckBoth(metadata)) expect(r).toMatchObject({ code: 0 });
}

describe('out of data space', () => {
  it('error mode: the write that needs block 33 fails with ENOSPC, earlier data survives', async () => {
    const pool = await smallPool('error', { noSpacePolicy: 'error' });
    const dev = pool.device(1);
    for (let b = 0; b < 32; b++) await dev.write(b * BLOCK, Buffer.alloc(BLOCK, b + 1));
    const err = await dev.write(32 * BLOCK, Buffer.alloc(4096, 0xee)).catch((e) => e);
    expect(err).toBeInstanceOf(OutOfDataSpaceError);
    expect(err.errno).toBe('ENOSPC');
    // Overwriting an existing, unshared block needs no space and still works.
    await dev.write(5 * BLOCK, Buffer.alloc(4096, 0x55));
    expect((await dev.read(5 * BLOCK, 4096)).every((x) => x === 0x55)).toBe(true);
    expect((await dev.read(31 * BLOCK, BLOCK)).every((x) => x === 32)).toBe(true);
    // Trimming frees blocks; after the commit that frees them, writes fit again.
    await dev.trim(0, 2 * BLOCK);
    await dev.write(40 * BLOCK, Buffer.alloc(BLOCK, 0x40));
    expect((await dev.read(40 * BLOCK, BLOCK)).every((x) => x === 0x40)).toBe(true);
    await expectClean(pool);
    await pool.close();
  });

  it('queue mode: a write waits, then completes once the pool grows', async () => {
    const pool = await smallPool('queue', { noSpacePolicy: 'queue', noSpaceTimeoutMs: 30_000 });
    const dev = pool.device(1);
    for (let b = 0; b < 32; b++) await dev.write(b * BLOCK, Buffer.alloc(BLOCK, b + 1));
    let done = false;
    const waiting = dev.write(33 * BLOCK, Buffer.alloc(BLOCK, 0x77)).then(() => (done = true));
    await new Promise((r) => setTimeout(r, 300));
    expect(done).toBe(false);
    await pool.resize(64 * BLOCK);
    await waiting;
    expect(done).toBe(true);
    expect((await dev.read(33 * BLOCK, BLOCK)).every((x) => x === 0x77)).toBe(true);
    expect(pool.status().dataBlocksTotal).toBe(64);
    await expectClean(pool);
    await pool.close();
  });

  it('queue mode: gives up with ENOSPC after the timeout', async () => {
    const pool = await smallPool('queue-timeout', { noSpacePolicy: 'queue', noSpaceTimeoutMs: 200 });
    const dev = pool.device(1);
    for (let b = 0; b < 32; b++) await dev.write(b * BLOCK, Buffer.alloc(BLOCK, 1));
    const started = Date.now();
    await expect(dev.write(40 * BLOCK, Buffer.alloc(512))).rejects.toThrow(/no space after waiting 200 ms/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    await expectClean(pool);
    await pool.close();
  });

  it('raises the low-water event once', async () => {
    const pool = await smallPool('lowwater', { lowWaterBlocks: 8 });
    const events: number[] = [];
    pool.on('low-water', (free: number) => events.push(free));
    const dev = pool.device(1);
    for (let b = 0; b < 30; b++) await dev.write(b * BLOCK, Buffer.alloc(BLOCK, 1));
    await new Promise((r) => setImmediate(r));
    expect(events).toEqual([7]);
    await pool.close();
  });
});

describe('out of metadata space', () => {
  it('puts the pool into read-only mode with needs_check set, never corrupt', async () => {
    // 1 MiB of metadata (256 blocks) cannot hold 40,000 scattered mappings.
    const dir = path.join(tmp.dir, 'meta-full');
    const pool = await Pool.create(
      dir,
      { dataSizeBytes: 4 * 2 ** 30, metadataSizeBytes: 2 ** 20 },
      { commitIntervalMs: 0 },
    );
    await pool.createThin(1, 4 * 2 ** 30);
    const dev = pool.device(1);
    let error: Error | undefined;
    let flushed = 0;
    for (let b = 0; b < 60_000 && !error; b++) {
      try {
        await dev.write(b * BLOCK, Buffer.alloc(512, 1));
        if (b % 1000 === 999) {
          await pool.commit();
          flushed = b + 1;
        }
      } catch (e) {
        error = e as Error;
      }
    }
    expect(error?.message).toMatch(/read-only: out of metadata space/);
    expect(pool.status()).toMatchObject({ mode: 'read-only', needsCheck: true });
    await expect(dev.write(0, Buffer.alloc(512))).rejects.toThrow(/read-only/);
    // Reads still work, and everything flushed is there.
    expect((await dev.read((flushed - 1) * BLOCK, 512)).every((x) => x === 1)).toBe(true);
    await pool.close();
    const metadata = path.join(dir, 'metadata');
    expect(checkMetadata(metadata).errors).toEqual([]);
    for (const r of await thinCheckBoth(metadata)) expect(r).toMatchObject({ code: 0 });
    const reopened = await Pool.open(dir);
    expect(reopened.status()).toMatchObject({ mode: 'read-only', needsCheck: true });
    await reopened.close();
  });
});
