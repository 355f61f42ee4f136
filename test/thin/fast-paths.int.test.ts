// The thin device's single-block fast paths (reads and in-place overwrites inside one block)
// and commits that sync data before their exclusive section: same results as the general paths,
// sharing with snapshots respected, metadata valid (thin_check), everything durable after flush.
import { cp } from 'node:fs/promises';
import path from 'node:path';
import { Pool } from '../../src/thin/pool';
import { checkMetadata } from '../../src/thin/check';
import { makeTempDir } from '../helpers/tmp';
import { thinCheckBoth } from '../helpers/thin-oracle';

const BLOCK = 64 * 1024;
const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

describe('single-block fast paths', () => {
  it('read zeros from holes, provision, overwrite in place, and break sharing with a snapshot', async () => {
    const dir = path.join(tmp.dir, 'fast');
    const pool = await Pool.create(dir, { dataSizeBytes: 2 ** 26 }, { commitIntervalMs: 0 });
    await pool.createThin(1, 64 * BLOCK);
    const dev = pool.device(1);
    expect((await dev.read(3 * BLOCK + 4096, 4096)).every((x) => x === 0)).toBe(true);

    await dev.write(3 * BLOCK + 4096, Buffer.alloc(4096, 0x11)); // provisions (general path)
    await dev.write(3 * BLOCK + 8192, Buffer.alloc(4096, 0x22), { fua: true }); // in place
    const block = await dev.read(3 * BLOCK, BLOCK);
    expect(block.subarray(0, 4096).every((x) => x === 0)).toBe(true);
    expect(block.subarray(4096, 8192).every((x) => x === 0x11)).toBe(true);
    expect(block.subarray(8192, 12288).every((x) => x === 0x22)).toBe(true);
    expect(pool.deviceInfo(1).details.mappedBlocks).toBe(1);

    await pool.createSnap(2, 1);
    // The block is shared now: the small write must copy it, not overwrite it in place.
    await dev.write(3 * BLOCK + 4096, Buffer.alloc(4096, 0x33));
    expect((await dev.read(3 * BLOCK + 4096, 4096)).every((x) => x === 0x33)).toBe(true);
    expect((await dev.read(3 * BLOCK + 8192, 4096)).every((x) => x === 0x22)).toBe(true);
    const snap = pool.device(2);
    expect((await snap.read(3 * BLOCK + 4096, 4096)).every((x) => x === 0x11)).toBe(true);
    // And after the copy, the device's own block is overwritten in place again.
    await dev.write(3 * BLOCK, Buffer.alloc(512, 0x44));
    expect((await dev.read(3 * BLOCK, 512)).every((x) => x === 0x44)).toBe(true);
    expect((await snap.read(3 * BLOCK, 512)).every((x) => x === 0)).toBe(true);
    await pool.close();

    expect(checkMetadata(path.join(dir, 'metadata')).errors).toEqual([]);
    for (const r of await thinCheckBoth(path.join(dir, 'metadata'))) expect(r).toMatchObject({ code: 0 });
    const reopened = await Pool.open(dir, { commitIntervalMs: 0 });
    expect((await reopened.device(1).read(3 * BLOCK + 4096, 4096)).every((x) => x === 0x33)).toBe(true);
    expect((await reopened.device(2).read(3 * BLOCK + 4096, 4096)).every((x) => x === 0x11)).toBe(true);
    await reopened.close();
  });

  it('keeps every write acknowledged before a flush, with commits running among the writes', async () => {
    const dir = path.join(tmp.dir, 'commits');
    const pool = await Pool.create(dir, { dataSizeBytes: 2 ** 27 }, { commitIntervalMs: 0 });
    await pool.createThin(1, 128 * BLOCK);
    const dev = pool.device(1);
    const model = Buffer.alloc(128 * BLOCK);
    const ops: Promise<unknown>[] = [];
    for (let round = 0; round < 4; round++) {
      for (let i = 0; i < 128; i++) {
        // Provisioning in round 0, small in-place overwrites after; a commit every 16 writes.
        const offset = i * BLOCK + round * 8192;
        const data = Buffer.alloc(round === 0 ? BLOCK : 4096, (round * 64 + i) % 255 || 1);
        const at = round === 0 ? i * BLOCK : offset;
        data.copy(model, at);
        ops.push(dev.write(at, data));
        if (i % 16 === 0) ops.push(pool.commit());
      }
      await Promise.all(ops.splice(0));
    }
    await dev.flush();
    // A copy taken now is what a crash right after the flush leaves (close would commit again).
    const crashed = path.join(tmp.dir, 'commits-crashed');
    await cp(dir, crashed, { recursive: true });
    const reopened = await Pool.open(crashed, { commitIntervalMs: 0 });
    expect((await reopened.device(1).read(0, 128 * BLOCK)).equals(model)).toBe(true);
    await reopened.close();
    await pool.close();
    expect(checkMetadata(path.join(crashed, 'metadata')).errors).toEqual([]);
    expect(checkMetadata(path.join(dir, 'metadata')).errors).toEqual([]);
  });
});
