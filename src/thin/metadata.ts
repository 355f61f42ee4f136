import { BlockManager } from '../pdata/block-manager';
import { BTree } from '../pdata/btree/btree';
import { plainValue, ValueType } from '../pdata/btree/value-type';
import { readU64 } from '../pdata/block-validator';
import { DataSpaceMap } from '../pdata/space-map/data-space-map';
import { MAX_METADATA_BLOCKS, MetadataSpaceMap } from '../pdata/space-map/metadata-space-map';
import { TransactionManager } from '../pdata/transaction-manager';
import { DEVICE_DETAILS_SIZE, mappedDataBlock } from './mapping';
import {
  SUPERBLOCK_LOCATION,
  Superblock,
  decodeSuperblock,
  encodeSuperblock,
  superblockValidator,
} from './superblock';

export interface FormatOptions {
  dataBlockSectors: number;
  nrDataBlocks: number;
}

export interface OpenOptions {
  readOnly?: boolean;
  cacheBlocks?: number;
}

/**
 * The thin-pool metadata: superblock, both space maps and the mapping and details trees, with
 * the commit protocol. It knows the format, not devices' I/O (that is the pool's job).
 */
export class ThinMetadata {
  /** Top level: device id → root of that device's mapping tree. */
  readonly devices: BTree;
  /** Bottom level: virtual block → (data block, time). */
  readonly mappings: BTree;
  readonly details: BTree;
  /** Fields committed with the next superblock; roots change as trees change. */
  sb: Superblock;

  private constructor(
    readonly bm: BlockManager,
    readonly tm: TransactionManager,
    readonly metadataSm: MetadataSpaceMap,
    readonly dataSm: DataSpaceMap | undefined,
    sb: Superblock,
  ) {
    this.sb = sb;
    const dataCounts = dataSm?.counts;
    const mappingValue: ValueType = {
      size: 8,
      inc: (v) => dataCounts!.inc(mappedDataBlock(v)),
      dec: (v) => dataCounts!.dec(mappedDataBlock(v)),
      equal: (a, b) => mappedDataBlock(a) === mappedDataBlock(b),
    };
    this.mappings = new BTree(tm, mappingValue);
    const subtreeValue: ValueType = {
      size: 8,
      inc: (v) => tm.inc(readU64(v, 0)),
      dec: (v) => this.mappings.del(readU64(v, 0)),
      equal: (a, b) => a.equals(b),
    };
    this.devices = new BTree(tm, subtreeValue);
    this.details = new BTree(tm, plainValue(DEVICE_DETAILS_SIZE));
  }

  /** Writes fresh, empty metadata over whatever the device held. */
  static format(path: string, options: FormatOptions): ThinMetadata {
    const bm = new BlockManager(path);
    const nrBlocks = Math.min(bm.nrBlocks, MAX_METADATA_BLOCKS);
    const { sm, tm } = MetadataSpaceMap.create(bm, nrBlocks);
    const dataSm = DataSpaceMap.create(tm, options.nrDataBlocks);
    const sb: Superblock = {
      flags: 0,
      time: 0,
      transactionId: 0,
      heldRoot: 0,
      dataSpaceMap: dataSm.root(),
      metadataSpaceMap: sm.root(),
      dataMappingRoot: 0,
      deviceDetailsRoot: 0,
      dataBlockSectors: options.dataBlockSectors,
      metadataNrBlocks: nrBlocks,
    };
    const md = new ThinMetadata(bm, tm, sm, dataSm, sb);
    md.sb.dataMappingRoot = md.devices.create();
    md.sb.deviceDetailsRoot = md.details.create();
    md.commit();
    return md;
  }

  static open(path: string, options: OpenOptions = {}): ThinMetadata {
    const bm = new BlockManager(path, options);
    try {
      const sb = decodeSuperblock(bm.read(SUPERBLOCK_LOCATION, superblockValidator));
      const { sm, tm } = MetadataSpaceMap.open(bm, sb.metadataSpaceMap);
      const dataSm = DataSpaceMap.open(tm, sb.dataSpaceMap);
      return new ThinMetadata(bm, tm, sm, dataSm, sb);
    } catch (e) {
      bm.close();
      throw e;
    }
  }

  /** Reads a superblock without the space maps (the held metadata snapshot, or a quick peek). */
  static readSuperblock(bm: BlockManager, location = SUPERBLOCK_LOCATION): Superblock {
    return decodeSuperblock(bm.read(location, superblockValidator));
  }

  get dataBlockBytes(): number {
    return this.sb.dataBlockSectors * 512;
  }

  /** Root of one device's mapping tree, or undefined when the device does not exist. */
  deviceRoot(id: number, mappingRoot = this.sb.dataMappingRoot): number | undefined {
    const v = this.devices.lookup(mappingRoot, id);
    return v ? readU64(v, 0) : undefined;
  }

  /**
   * Makes every change since the last commit durable: space maps are written, every block but
   * the superblock is flushed and synced, then the superblock is written and synced.
   */
  commit(): void {
    if (!this.dataSm) throw new Error('metadata opened without space maps is read-only');
    this.dataSm.commit(this.tm);
    this.metadataSm.commit(this.tm);
    this.sb.dataSpaceMap = this.dataSm.root();
    this.sb.metadataSpaceMap = this.metadataSm.root();
    this.bm.flush(new Set([SUPERBLOCK_LOCATION]));
    this.bm.writeNow(SUPERBLOCK_LOCATION, encodeSuperblock(this.sb), superblockValidator);
    this.dataSm.committed();
    this.metadataSm.committed();
    this.tm.beginTransaction();
  }

  /**
   * Freezes the committed trees under a copy of the superblock (the kernel's
   * reserve_metadata_snap): the copy's roots gain a reference, so later changes shadow them and
   * readers of the copy keep a consistent view. Only one may be held.
   */
  reserveMetadataSnap(): number {
    if (this.sb.heldRoot) throw new MetadataSnapBusyError(this.sb.heldRoot);
    this.commit();
    const { location, data } = this.tm.newBlock(superblockValidator, 'the metadata snapshot superblock');
    const zeroRoot = { nrBlocks: 0, nrAllocated: 0, bitmapRoot: 0, refCountRoot: 0 };
    encodeSuperblock({ ...this.sb, heldRoot: 0, dataSpaceMap: zeroRoot, metadataSpaceMap: zeroRoot }, data);
    this.tm.inc(this.sb.dataMappingRoot);
    this.tm.inc(this.sb.deviceDetailsRoot);
    this.sb.heldRoot = location;
    this.commit();
    return location;
  }

  /** Drops the held metadata snapshot and every block only it referenced. */
  releaseMetadataSnap(): void {
    const held = this.sb.heldRoot;
    if (!held) throw new NoMetadataSnapError();
    const snap = ThinMetadata.readSuperblock(this.bm, held);
    this.sb.heldRoot = 0;
    this.devices.del(snap.dataMappingRoot);
    this.details.del(snap.deviceDetailsRoot);
    this.tm.dec(held);
    this.commit();
  }

  /** The superblock of the held metadata snapshot, if any: its roots give the frozen view. */
  heldSuperblock(): Superblock | undefined {
    return this.sb.heldRoot ? ThinMetadata.readSuperblock(this.bm, this.sb.heldRoot) : undefined;
  }

  close(): void {
    this.bm.close();
  }
}

export class MetadataSnapBusyError extends Error {
  constructor(readonly heldRoot: number) {
    super(`a metadata snapshot is already held (superblock copy at block ${heldRoot}); release it first`);
    this.name = 'MetadataSnapBusyError';
  }
}

export class NoMetadataSnapError extends Error {
  constructor() {
    super('no metadata snapshot is held');
    this.name = 'NoMetadataSnapError';
  }
}
