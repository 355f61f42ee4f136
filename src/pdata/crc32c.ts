// CRC-32C (Castagnoli) in the form dm-persistent-data uses: seed ~0 and no final inversion.
// The native package is used when its prebuilt binary loaded; the pure-JS one otherwise.

type Crc32cFn = (data: Uint8Array) => number;

function loadNative(): Crc32cFn | undefined {
  if (process.env.THINPOOL_CRC32C === 'js') return undefined;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const native = require('@node-rs/crc32') as { crc32c(input: Buffer): number };
    return (data) => native.crc32c(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  } catch {
    return undefined;
  }
}

function loadJs(): Crc32cFn {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const js = require('crc-32/crc32c') as { buf(data: Uint8Array, seed?: number): number };
  return (data) => js.buf(data) >>> 0;
}

const native = loadNative();
const standardCrc32c: Crc32cFn = native ?? loadJs();

/** Which implementation is in use, for `pool status` and the benchmark. */
export const crc32cImplementation: 'native' | 'js' = native ? 'native' : 'js';

/** Standard CRC-32C (check value 0xE3069283 for "123456789"). */
export function crc32c(data: Uint8Array): number {
  return standardCrc32c(data);
}

/** The kernel's `crc32c(~0, data, len)`: the standard CRC without its final inversion. */
export function crc32cRaw(data: Uint8Array): number {
  return (standardCrc32c(data) ^ 0xffffffff) >>> 0;
}

export { loadJs as jsCrc32cForBenchmark };
