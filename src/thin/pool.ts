import fs from 'node:fs';
import { logger } from '../log';
import { deviceSizeBytes } from '../pdata/device-size';
import { formatSize } from '../util/size';
import { ThinMetadata } from './metadata';
import {
  MAX_METADATA_BYTES,
  MIN_METADATA_BYTES,
  PoolConfigError,
  checkBlockSize,
  defaultMetadataBytes,
  poolPaths,
  prepareBacking,
} from './pool-files';

const log = logger('pool');

export interface PoolCreateOptions {
  dataSizeBytes?: number;
  blockSizeBytes?: number;
  metadataSizeBytes?: number;
  /** Use this block device for data instead of a sparse file (linked as `<dir>/data`). */
  dataDevice?: string;
  metadataDevice?: string;
}

export interface PoolOpenOptions {
  readOnly?: boolean;
  cacheBlocks?: number;
  /** Skip reading every tree node at open (faster for huge pools; damage then shows up on use). */
  skipVerify?: boolean;
}

export interface PoolStatus {
  path: string;
  transactionId: number;
  time: number;
  dataBlockBytes: number;
  dataBlocksUsed: number;
  dataBlocksTotal: number;
  metadataBlocksUsed: number;
  metadataBlocksTotal: number;
  heldMetadataRoot: number | null;
  devices: number;
  needsCheck: boolean;
}

/** A pool directory: dm-thin metadata plus a data file, opened together. */
export class Pool {
  private constructor(
    readonly dir: string,
    readonly md: ThinMetadata,
    readonly dataFd: number,
  ) {}

  static create(dir: string, options: PoolCreateOptions): Pool {
    const blockBytes = options.blockSizeBytes ?? 64 * 1024;
    checkBlockSize(blockBytes);
    const paths = poolPaths(dir);
    if (fs.existsSync(paths.metadata) || fs.existsSync(paths.data)) {
      throw new PoolConfigError(`${dir} already holds a pool; refusing to overwrite it`);
    }
    if (!options.dataDevice && options.dataSizeBytes === undefined) throw new PoolConfigError('a data size is required');
    fs.mkdirSync(dir, { recursive: true });
    if (options.dataDevice) fs.symlinkSync(options.dataDevice, paths.data);
    if (options.metadataDevice) fs.symlinkSync(options.metadataDevice, paths.metadata);
    try {
      const dataBytes = prepareBacking(paths.data, options.dataSizeBytes ?? 0, 'data');
      const nrDataBlocks = Math.floor(dataBytes / blockBytes);
      if (nrDataBlocks < 1) throw new PoolConfigError(`data size ${formatSize(dataBytes)} is smaller than one ${formatSize(blockBytes)} block`);
      if (dataBytes % blockBytes) {
        log.warn(`data size is not a multiple of the block size; the last ${formatSize(dataBytes % blockBytes)} stay unused`);
      }
      let metadataBytes = options.metadataSizeBytes ?? defaultMetadataBytes(nrDataBlocks);
      if (metadataBytes < MIN_METADATA_BYTES) throw new PoolConfigError(`metadata size ${formatSize(metadataBytes)} is below the 1 MiB minimum`);
      if (metadataBytes > MAX_METADATA_BYTES && !options.metadataDevice) {
        log.warn(`metadata size ${formatSize(metadataBytes)} exceeds what the format can address; using the first ${formatSize(MAX_METADATA_BYTES)}`);
        metadataBytes = MAX_METADATA_BYTES;
      }
      const metadataDeviceBytes = prepareBacking(paths.metadata, metadataBytes, 'metadata');
      if (metadataDeviceBytes > MAX_METADATA_BYTES) {
        log.warn(`metadata device is larger than the format can address; only the first ${formatSize(MAX_METADATA_BYTES)} are used`);
      }
      const md = ThinMetadata.format(paths.metadata, { dataBlockSectors: blockBytes / 512, nrDataBlocks });
      md.close();
      log.info('created pool', { dir, blockBytes, nrDataBlocks, metadataBytes });
    } catch (e) {
      // Leave nothing half-made behind: a later create must not find an "existing pool".
      // (For block devices only our symlinks go.)
      fs.rmSync(paths.metadata, { force: true });
      fs.rmSync(paths.data, { force: true });
      throw e;
    }
    return Pool.open(dir);
  }

  static open(dir: string, options: PoolOpenOptions = {}): Pool {
    const paths = poolPaths(dir);
    if (!fs.existsSync(paths.metadata)) throw new PoolConfigError(`${dir} is not a pool: ${paths.metadata} is missing`);
    const md = ThinMetadata.open(paths.metadata, options);
    let dataFd: number;
    try {
      if (!options.skipVerify) md.verifyTrees();
      dataFd = fs.openSync(paths.data, options.readOnly ? 'r' : 'r+');
      const dataBytes = deviceSizeBytes(dataFd, paths.data);
      const needed = md.sb.dataSpaceMap.nrBlocks * md.dataBlockBytes;
      if (dataBytes < needed) {
        fs.closeSync(dataFd);
        throw new PoolConfigError(`${paths.data} holds ${formatSize(dataBytes)} but the metadata maps ${formatSize(needed)}`);
      }
    } catch (e) {
      md.close();
      throw e;
    }
    return new Pool(dir, md, dataFd);
  }

  status(): PoolStatus {
    const sb = this.md.sb;
    return {
      path: this.dir,
      transactionId: sb.transactionId,
      time: sb.time,
      dataBlockBytes: this.md.dataBlockBytes,
      dataBlocksUsed: this.md.dataSm!.counts.nrAllocated,
      dataBlocksTotal: this.md.dataSm!.counts.nrBlocks,
      metadataBlocksUsed: this.md.metadataSm.counts.nrAllocated,
      metadataBlocksTotal: this.md.metadataSm.counts.nrBlocks,
      heldMetadataRoot: sb.heldRoot || null,
      devices: this.md.devices.count(sb.dataMappingRoot),
      needsCheck: (sb.flags & 1) !== 0,
    };
  }

  close(): void {
    this.md.close();
    fs.closeSync(this.dataFd);
  }
}
