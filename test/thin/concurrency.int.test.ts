// Concurrent I/O: operations on one block are serialized (no lost update, no torn copy when a
// shared block is broken); many blocks proceed at once; periodic commits bound unflushed loss.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { Pool } from '../../src/thin/pool';
import { checkMetadata } from '../../src/thin/check';
import { makeTempDir } from '../helpers/tmp';
import { CLI } from '../helpers/cli';

const BLOCK = 64 * 1024;
const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

describe('concurrent I/O', () => {
  it('serializes partial writes to one shared block (each lands exactly once, none lost)', async () => {
    const pool = await Pool.create(
      path.join(tmp.dir, 'same-block'),
      { dataSizeBytes: 2 ** 28 },
      { commitIntervalMs: 0 },
    );
    await pool.createThin(1, 16 * BLOCK);
    const dev = pool.device(1);
    await dev.write(0, Buffer.alloc(BLOCK, 0xaa));
    await pool.createSnap(2, 1);
    // 128 concurrent 512-byte writes into the same (now shared) block: the first breaks sharing,
    // the rest must each land in the new copy.
    await Promise.all(Array.from({ length: 128 }, (_, i) => dev.write(i * 512, Buffer.alloc(512, i + 1))));
    const block = await dev.read(0, BLOCK);
    for (let i = 0; i < 128; i++)
      expect(block.subarray(i * 512, i * 512 + 512).every((x) => x === i + 1)).toBe(true);
    expect((await pool.device(2).read(0, BLOCK)).every((x) => x === 0xaa)).toBe(true);
    expect(pool.deviceInfo(1).details.mappedBlocks).toBe(1);
    await pool.close();
    expect(checkMetadata(path.join(pool.dir, 'metadata')).errors).toEqual([]);
  });

  it('runs writes, trims and reads on many blocks at once and ends consistent', async () => {
    const pool = await Pool.create(
      path.join(tmp.dir, 'many'),
      { dataSizeBytes: 2 ** 29 },
      { commitIntervalMs: 20 },
    );
    await pool.createThin(1, 256 * BLOCK);
    const dev = pool.device(1);
    const model = Buffer.alloc(256 * BLOCK);
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i < 400; i++) {
      const b = (i * 37) % 256;
      const data = Buffer.alloc(8192, (i % 250) + 1);
      // Writes to distinct blocks in each round of 256, so the model's order is well defined.
      if (i < 256) {
        data.copy(model, b * BLOCK + 4096);
        ops.push(dev.write(b * BLOCK + 4096, data));
      } else ops.push(dev.read(b * BLOCK, BLOCK));
      if (i % 50 === 0) ops.push(pool.createSnap(1000 + i, 1));
    }
    await Promise.all(ops);
    await Promise.all(Array.from({ length: 64 }, (_, b) => dev.trim(b * 2 * BLOCK, BLOCK)));
    for (let b = 0; b < 64; b++) model.fill(0, b * 2 * BLOCK, b * 2 * BLOCK + BLOCK);
    expect((await dev.read(0, 256 * BLOCK)).equals(model)).toBe(true);
    await pool.close();
    expect(checkMetadata(path.join(pool.dir, 'metadata')).errors).toEqual([]);
  });

  it('commits unflushed writes within the periodic interval', async () => {
    const dir = path.join(tmp.dir, 'periodic');
    const pool = await Pool.create(dir, { dataSizeBytes: 2 ** 28 }, { commitIntervalMs: 0 });
    await pool.createThin(1, 16 * BLOCK);
    await pool.close();
    // A child writes without flushing, waits 1.5 intervals, and is killed.
    const script = `
      const { Pool } = require(${JSON.stringify(path.join(path.dirname(CLI), '../thin/pool.js'))});
      (async () => {
        const pool = await Pool.open(${JSON.stringify(dir)}, { commitIntervalMs: 200 });
        await pool.device(1).write(0, Buffer.alloc(4096, 0x5c));
        console.log('written');
        setInterval(() => {}, 1000);
      })();`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    await new Promise((r) => setTimeout(r, 300));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const reopened = await Pool.open(dir, { commitIntervalMs: 0 });
    expect((await reopened.device(1).read(0, 4096)).every((x) => x === 0x5c)).toBe(true);
    await reopened.close();
  });
});
