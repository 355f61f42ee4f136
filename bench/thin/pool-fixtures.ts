// Pools for the engine benchmarks, built fast through the metadata API (no data I/O).
import { performance } from 'node:perf_hooks';
import { Pool } from '../../src/thin/pool';
import { ThinMetadata } from '../../src/thin/metadata';
import { poolPaths } from '../../src/thin/pool-files';

const BLOCK = 64 * 1024;

/** A pool whose device 0 maps `blocks` blocks, built through the metadata API (no data I/O). */
export async function mappedPool(
  dir: string,
  blocks: number,
  options: { metadataBytes?: number; era?: boolean } = {},
): Promise<Pool> {
  await (
    await Pool.create(
      dir,
      {
        dataSizeBytes: (blocks + 200_000) * BLOCK,
        metadataSizeBytes: options.metadataBytes ?? 512 * 2 ** 20,
        era: options.era,
      },
      { commitIntervalMs: 0 },
    )
  ).close();
  let pool = await Pool.open(dir, { commitIntervalMs: 0 });
  await pool.createThin(0, blocks * BLOCK * 2);
  await pool.close();
  const md = ThinMetadata.open(poolPaths(dir).metadata);
  for (let v = 0; v < blocks; v++) {
    md.insertMapping(0, v, md.dataSm.counts.allocate()!);
    if (v % 200_000 === 199_999) md.commit();
  }
  md.commit();
  md.close();
  pool = await Pool.open(dir, { commitIntervalMs: 0, skipVerify: true });
  return pool;
}

/**
 * Revert latency: each round writes one block of `id` (so its tree differs from the snapshot's
 * again) and reverts it to `snapshot`, which frees what the write made.
 */
export async function revertLatencies(
  pool: Pool,
  id: number,
  snapshot: number,
  blocks: number,
  count: number,
) {
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    await pool.device(id).write(((i * 7919) % blocks) * BLOCK, Buffer.alloc(4096, i & 0xff));
    const t0 = performance.now();
    await pool.revertDevice(id, snapshot);
    out.push(performance.now() - t0);
  }
  return out;
}
