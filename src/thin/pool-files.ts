import fs from 'node:fs';
import path from 'node:path';
import { deviceSizeBytes } from '../pdata/device-size';
import { MAX_METADATA_BLOCKS } from '../pdata/space-map/metadata-space-map';
import { formatSize } from '../util/size';

// Where a pool keeps its parts inside its directory. `metadata` and `data` may be symlinks to
// block devices; everything else is a regular file.
export function poolPaths(dir: string) {
  return {
    dir,
    metadata: path.join(dir, 'metadata'),
    data: path.join(dir, 'data'),
    catalogue: path.join(dir, 'catalogue.json'),
  };
}

export const MIN_BLOCK_BYTES = 64 * 1024;
export const MAX_BLOCK_BYTES = 1024 * 1024 * 1024;
export const MAX_METADATA_BYTES = MAX_METADATA_BLOCKS * 4096;
export const MIN_METADATA_BYTES = 1024 * 1024;

export class PoolConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PoolConfigError';
  }
}

export function checkBlockSize(bytes: number): void {
  if (bytes % MIN_BLOCK_BYTES !== 0 || bytes < MIN_BLOCK_BYTES || bytes > MAX_BLOCK_BYTES) {
    throw new PoolConfigError(
      `block size ${formatSize(bytes)} is not allowed: it must be a multiple of 64 KiB between 64 KiB and 1 GiB`,
    );
  }
}

/** A sensible metadata size: room for every data block mapped a few times over, within the format. */
export function defaultMetadataBytes(nrDataBlocks: number): number {
  const wanted = Math.max(16 * 2 ** 20, nrDataBlocks * 128);
  return Math.min(Math.ceil(wanted / 2 ** 20) * 2 ** 20, MAX_METADATA_BYTES);
}

/** Creates a sparse file of `bytes`, or checks that an existing block device is big enough. */
export function prepareBacking(file: string, bytes: number, what: string): number {
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(file);
  } catch {
    st = undefined;
  }
  if (st?.isBlockDevice()) {
    const fd = fs.openSync(file, 'r');
    try {
      return deviceSizeBytes(fd, file);
    } finally {
      fs.closeSync(fd);
    }
  }
  if (st) throw new PoolConfigError(`${file} already exists; refusing to overwrite it`);
  const fd = fs.openSync(file, 'wx', 0o600);
  try {
    fs.ftruncateSync(fd, bytes);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
    throw new PoolConfigError(
      `cannot size the ${what} file ${file} to ${formatSize(bytes)}: ${(e as Error).message}`,
    );
  }
  fs.closeSync(fd);
  return bytes;
}
