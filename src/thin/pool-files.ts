import fs from 'node:fs';
import path from 'node:path';
import { deviceSizeBytes } from '../pdata/device-size';
import { MAX_METADATA_BLOCKS } from '../pdata/space-map/metadata-space-map';
import { formatSize } from '../util/size';
import { logger } from '../log';
import { Catalogue } from './catalogue';
import { EraTracker } from './era/era-tracker';
import { ThinMetadata } from './metadata';

const log = logger('pool');

export interface PoolCreateOptions {
  dataSizeBytes?: number;
  blockSizeBytes?: number;
  metadataSizeBytes?: number;
  /** Use this block device for data instead of a sparse file (linked as `<dir>/data`). */
  dataDevice?: string;
  metadataDevice?: string;
  /** Track the era of every data block (dm-era metadata beside the pool's). */
  era?: boolean;
}

// Where a pool keeps its parts inside its directory. `metadata` and `data` may be symlinks to
// block devices; everything else is a regular file.
export function poolPaths(dir: string) {
  return {
    dir,
    metadata: path.join(dir, 'metadata'),
    data: path.join(dir, 'data'),
    /** An LMDB environment (a directory). */
    catalogue: path.join(dir, 'catalogue'),
    /** The JSON catalogue of earlier releases, upgraded on the first read-write open. */
    legacyCatalogue: path.join(dir, 'catalogue.json'),
    journal: path.join(dir, 'mapping-journal'),
    /** dm-era metadata of the data blocks, when era tracking is on, and its journal. */
    era: { metadata: path.join(dir, 'era-metadata'), journal: path.join(dir, 'era-journal') },
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

/** Writes a new, empty pool into `dir`: metadata, data and catalogue; nothing is left on failure. */
export function formatPool(dir: string, options: PoolCreateOptions): void {
  const blockBytes = options.blockSizeBytes ?? 64 * 1024;
  checkBlockSize(blockBytes);
  const paths = poolPaths(dir);
  if (
    fs.existsSync(paths.metadata) ||
    fs.existsSync(paths.data) ||
    fs.existsSync(paths.catalogue) ||
    fs.existsSync(paths.legacyCatalogue)
  ) {
    throw new PoolConfigError(`${dir} already holds a pool; refusing to overwrite it`);
  }
  if (!options.dataDevice && options.dataSizeBytes === undefined)
    throw new PoolConfigError('a data size is required');
  fs.mkdirSync(dir, { recursive: true });
  // A journal left from an earlier pool here must never be replayed onto this one.
  for (const f of [paths.journal, paths.era.journal, paths.era.metadata]) fs.rmSync(f, { force: true });
  try {
    if (options.dataDevice) fs.symlinkSync(options.dataDevice, paths.data);
    if (options.metadataDevice) fs.symlinkSync(options.metadataDevice, paths.metadata);
    const dataBytes = prepareBacking(paths.data, options.dataSizeBytes ?? 0, 'data');
    const nrDataBlocks = Math.floor(dataBytes / blockBytes);
    if (nrDataBlocks < 1) {
      throw new PoolConfigError(
        `data size ${formatSize(dataBytes)} is smaller than one ${formatSize(blockBytes)} block`,
      );
    }
    if (dataBytes % blockBytes) {
      log.warn(
        `data size is not a multiple of the block size; the last ${formatSize(dataBytes % blockBytes)} stay unused`,
      );
    }
    let metadataBytes = options.metadataSizeBytes ?? defaultMetadataBytes(nrDataBlocks);
    if (metadataBytes < MIN_METADATA_BYTES) {
      throw new PoolConfigError(`metadata size ${formatSize(metadataBytes)} is below the 1 MiB minimum`);
    }
    if (metadataBytes > MAX_METADATA_BYTES && !options.metadataDevice) {
      log.warn(
        `metadata size ${formatSize(metadataBytes)} exceeds what the format can address; using the first ${formatSize(MAX_METADATA_BYTES)}`,
      );
      metadataBytes = MAX_METADATA_BYTES;
    }
    if (prepareBacking(paths.metadata, metadataBytes, 'metadata') > MAX_METADATA_BYTES) {
      log.warn(
        `metadata device is larger than the format can address; only the first ${formatSize(MAX_METADATA_BYTES)} are used`,
      );
    }
    ThinMetadata.format(paths.metadata, { dataBlockSectors: blockBytes / 512, nrDataBlocks }).close();
    Catalogue.create(paths.catalogue, 0).close();
    if (options.era) EraTracker.format(paths.era, nrDataBlocks, blockBytes / 512);
    log.info('created pool', { dir, blockBytes, nrDataBlocks, metadataBytes, era: options.era ?? false });
  } catch (e) {
    // Leave nothing half-made behind (for block devices only our symlinks go).
    for (const f of [paths.metadata, paths.data, paths.catalogue, paths.era.metadata, paths.era.journal])
      fs.rmSync(f, { force: true, recursive: true });
    throw e;
  }
}
