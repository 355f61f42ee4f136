// delta() and changedExtents() against the truth: a restricted walk equals the full delta cut
// to the window, and every block whose bytes differ between two snapshots is reported changed.
import path from 'node:path';
import { Pool } from '../../src/thin/pool';
import { makeTempDir } from '../helpers/tmp';
import { seededRandom, testSeed } from '../helpers/random';
import { randomData, randomRange } from '../helpers/thin-model';

const BLOCK = 64 * 1024;
const SIZE = 2048 * BLOCK;
const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

it(`changed extents cover every differing byte and match the full delta (seed ${testSeed()})`, async () => {
  const rnd = seededRandom(testSeed());
  const pool = await Pool.create(
    path.join(tmp.dir, 'pool'),
    { dataSizeBytes: 2 ** 30 },
    { commitIntervalMs: 0 },
  );
  await pool.createThin(1, SIZE);
  for (let i = 0; i < 300; i++) {
    const { offset, length } = randomRange(rnd, SIZE);
    await pool.device(1).write(offset, randomData(length));
  }
  await pool.createSnap(2, 1);
  for (let i = 0; i < 150; i++) {
    const { offset, length } = randomRange(rnd, SIZE);
    if (rnd.next() < 0.8) await pool.device(1).write(offset, randomData(length));
    else await pool.device(1).trim(offset, length);
  }
  await pool.createSnap(3, 1);

  const full = await pool.delta(2, 3);
  const changedBlocks = new Set<number>();
  for (const r of full) for (let b = r.begin; b < r.begin + r.length; b++) changedBlocks.add(b);
  expect(changedBlocks.size).toBeGreaterThan(10);

  const a = await pool.device(2).read(0, SIZE);
  const b = await pool.device(3).read(0, SIZE);
  for (let block = 0; block < SIZE / BLOCK; block++) {
    const differs = !a
      .subarray(block * BLOCK, (block + 1) * BLOCK)
      .equals(b.subarray(block * BLOCK, (block + 1) * BLOCK));
    if (differs) expect({ block, reported: changedBlocks.has(block) }).toEqual({ block, reported: true });
  }

  // Random byte windows: the restricted walk says exactly what the full delta says there.
  for (let i = 0; i < 200; i++) {
    const { offset, length } = randomRange(rnd, SIZE, 8 * 2 ** 20);
    const extents = await pool.changedExtents(2, 3, offset, length);
    expect(extents[0].offset).toBe(offset);
    expect(extents.reduce((s, e) => s + e.length, 0)).toBe(length);
    for (const e of extents) {
      for (let pos = e.offset; pos < e.offset + e.length; pos += 512) {
        const block = Math.floor(pos / BLOCK);
        if (changedBlocks.has(block) !== e.changed)
          throw new Error(`window ${offset}+${length}: byte ${pos} says ${e.changed}`);
      }
    }
  }
  await pool.reserveMetadataSnap();
  expect(await pool.delta(2, 3, { useMetadataSnap: true })).toEqual(full);
  await pool.close();
});
