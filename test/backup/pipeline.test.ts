// The create pipeline's parts that need no driver: grouping chunks into reads, hashing on workers.
import { createHash, randomBytes } from 'node:crypto';
import { HashPool, chunkDigest } from '../../src/backup/hash-pool';
import { cutOnGrid, groupReads } from '../../src/backup/ranges';

const KiB = 1024;

test('groupReads joins only chunks that touch, up to the read size', () => {
  const pieces = cutOnGrid(
    [
      { offset: 0, length: 192 * KiB },
      { offset: 320 * KiB, length: 64 * KiB },
    ],
    64 * KiB,
  );
  expect(groupReads(pieces, 128 * KiB).map((r) => [r.offset, r.length, r.pieces.length])).toEqual([
    [0, 128 * KiB, 2],
    [128 * KiB, 64 * KiB, 1],
    [320 * KiB, 64 * KiB, 1],
  ]);
  // A chunk larger than the read size still gets a read of its own.
  expect(groupReads([{ offset: 0, length: 4096 * KiB }], 1024 * KiB)).toHaveLength(1);
});

test.each([0, 2])('HashPool with %i worker threads: SHA-256 in place, zeros as ""', async (threads) => {
  const slab = new SharedArrayBuffer(1024 * KiB);
  const view = Buffer.from(slab);
  randomBytes(512 * KiB).copy(view, 0);
  view.fill(0, 512 * KiB);
  const pool = new HashPool(slab, threads);
  try {
    const pieces: [number, number][] = [
      [0, 256 * KiB],
      [256 * KiB, 256 * KiB],
      [512 * KiB, 512 * KiB],
      [100, 4 * KiB],
    ];
    const expected = pieces.map(([at, n]) =>
      at >= 512 * KiB
        ? ''
        : createHash('sha256')
            .update(view.subarray(at, at + n))
            .digest('hex'),
    );
    // Many jobs at once, spread over the workers, come back in order.
    const results = await Promise.all(Array.from({ length: 20 }, () => pool.digest(pieces)));
    for (const r of results) expect(r).toEqual(expected);
    expect(chunkDigest(view.subarray(0, 256 * KiB))).toBe(expected[0]);
  } finally {
    await pool.close();
  }
  await expect(pool.digest([[0, 1]])).rejects.toThrow(/closed/);
});
