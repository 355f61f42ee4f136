import { Pool, PoolOpenOptions } from '../thin/pool';

/** Opens the pool for one command and always closes it (committing) afterwards. */
export async function withPool<T>(
  dir: string,
  options: PoolOpenOptions,
  fn: (pool: Pool) => Promise<T> | T,
): Promise<T> {
  const pool = await Pool.open(dir, { commitIntervalMs: 0, ...options });
  try {
    return await fn(pool);
  } finally {
    await pool.close();
  }
}
