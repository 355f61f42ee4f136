// When the pool syncs the data file: before every commit that carries new mappings (so a mapping
// never reaches the disk ahead of its data), on a flush with dirty data, and not otherwise.
import path from 'node:path';
import { Pool } from '../../src/thin/pool';
import { checkMetadata } from '../../src/thin/check';
import { makeTempDir } from '../helpers/tmp';

const BLOCK = 64 * 1024;
const INTERVAL_MS = 25;
const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

function counters(pool: Pool): { commits: number; dataSyncs: number } {
  const { commits, dataSyncs } = pool.status();
  return { commits, dataSyncs };
}

describe('commit policy', () => {
  it('periodic commits sync data only when they commit new mappings; a flush always does', async () => {
    const dir = path.join(tmp.dir, 'periodic');
    const pool = await Pool.create(dir, { dataSizeBytes: 2 ** 26 }, { commitIntervalMs: INTERVAL_MS });
    await pool.createThin(1, 16 * BLOCK);
    const dev = pool.device(1);
    const start = counters(pool);

    // A first write provisions a block: the next periodic commit syncs its data, then commits.
    await dev.write(0, Buffer.alloc(BLOCK, 1));
    await until('a periodic commit', () => pool.status().commits > start.commits);
    const provisioned = counters(pool);
    expect(provisioned.dataSyncs).toBe(start.dataSyncs + 1);
    expect(provisioned.commits).toBe(start.commits + 1);

    // Overwrites of the mapped block change no metadata: periodic commits leave them alone.
    for (let i = 0; i < 10; i++) {
      await dev.write(4096 * i, Buffer.alloc(4096, 2 + i));
      await sleep(INTERVAL_MS);
    }
    await sleep(4 * INTERVAL_MS);
    expect(counters(pool)).toEqual(provisioned);

    // The client's flush makes them durable: one data sync, no metadata commit.
    await pool.flush();
    expect(counters(pool)).toEqual({ commits: provisioned.commits, dataSyncs: provisioned.dataSyncs + 1 });
    await pool.flush();
    expect(counters(pool)).toEqual({ commits: provisioned.commits, dataSyncs: provisioned.dataSyncs + 1 });

    await pool.close();
    const reopened = await Pool.open(dir, { commitIntervalMs: 0 });
    const block = await reopened.device(1).read(0, BLOCK);
    for (let i = 0; i < 10; i++)
      expect(block.subarray(4096 * i, 4096 * i + 4096).every((x) => x === 2 + i)).toBe(true);
    expect(block.subarray(40960).every((x) => x === 1)).toBe(true);
    await reopened.close();
    expect(checkMetadata(path.join(dir, 'metadata')).errors).toEqual([]);
  });

  it('syncs unflushed data before a metadata snapshot, a resize or a device change commits its mappings', async () => {
    const dir = path.join(tmp.dir, 'ordered');
    const pool = await Pool.create(dir, { dataSizeBytes: 2 ** 26 }, { commitIntervalMs: 0 });
    await pool.createThin(1, 16 * BLOCK);
    const dev = pool.device(1);

    const steps: [string, () => Promise<unknown>][] = [
      ['reserve a metadata snapshot', () => pool.reserveMetadataSnap()],
      ['release the metadata snapshot', () => pool.releaseMetadataSnap()],
      ['grow the pool', () => pool.resize(2 ** 27)],
      ['take a snapshot', () => pool.createSnap(2, 1)],
      ['delete the snapshot', () => pool.deleteDevice(2)],
    ];
    for (const [i, [what, step]] of steps.entries()) {
      // An unflushed write into an unmapped block leaves a new mapping for the step's commit.
      await dev.write((i + 1) * BLOCK, Buffer.alloc(BLOCK, 0x40 + i));
      const before = counters(pool);
      await step();
      const after = counters(pool);
      expect({ what, dataSyncs: after.dataSyncs - before.dataSyncs }).toEqual({ what, dataSyncs: 1 });
      expect(after.commits).toBeGreaterThan(before.commits);
    }
    await pool.close();
    expect(checkMetadata(path.join(dir, 'metadata')).errors).toEqual([]);
  });

  it('flushes with nothing to make durable hold no I/O back, and queued flushes share a commit', async () => {
    const dir = path.join(tmp.dir, 'coalesce');
    const pool = await Pool.create(dir, { dataSizeBytes: 2 ** 26 }, { commitIntervalMs: 0 });
    await pool.createThin(1, 16 * BLOCK);
    const dev = pool.device(1);
    await pool.flush();
    const idle = counters(pool);
    // Nothing written since: a flood of flushes costs no sync and no commit.
    await Promise.all(Array.from({ length: 100 }, () => pool.flush()));
    expect(counters(pool)).toEqual(idle);

    // A write, then flushes sent together: the first queues a commit, the rest join it.
    await dev.write(0, Buffer.alloc(BLOCK, 7));
    await Promise.all(Array.from({ length: 50 }, () => pool.flush()));
    const after = counters(pool);
    expect(after.dataSyncs).toBe(idle.dataSyncs + 1);
    expect(after.commits).toBe(idle.commits + 1);

    // A write that finishes while a commit runs is covered by a later flush, not lost.
    await dev.write(BLOCK, Buffer.alloc(BLOCK, 8));
    const first = pool.flush();
    const late = dev.write(2 * BLOCK, Buffer.alloc(BLOCK, 9)).then(() => pool.flush());
    await Promise.all([first, late]);
    expect(pool.status().dataSyncs).toBeGreaterThan(after.dataSyncs);
    await pool.close();
    expect(checkMetadata(path.join(dir, 'metadata')).errors).toEqual([]);
    const reopened = await Pool.open(dir, { commitIntervalMs: 0 });
    for (const [block, fill] of [
      [0, 7],
      [1, 8],
      [2, 9],
    ])
      expect((await reopened.device(1).read(block * BLOCK, BLOCK)).equals(Buffer.alloc(BLOCK, fill))).toBe(
        true,
      );
    await reopened.close();
  });
});
