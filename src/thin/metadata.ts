import { BlockManager } from '../pdata/block-manager';
import { BTree } from '../pdata/btree/btree';
import { plainValue, ValueType } from '../pdata/btree/value-type';
import { readU64 } from '../pdata/block-validator';
import { DataSpaceMap } from '../pdata/space-map/data-space-map';
import { MAX_METADATA_BLOCKS, MetadataSpaceMap } from '../pdata/space-map/metadata-space-map';
import { TransactionManager } from '../pdata/transaction-manager';
import { u64Value as u64 } from '../pdata/btree/node';
import { faultPoint } from '../util/fault-point';
import {
  DeviceExistsError,
  DeviceNotFoundError,
  MetadataSnapBusyError,
  NoMetadataSnapError,
  TransactionIdMismatchError,
} from './errors';
import {
  DEVICE_DETAILS_SIZE,
  DeviceDetails,
  MAX_DEVICE_ID,
  MAX_TIME,
  Mapping,
  decodeDetails,
  decodeMapping,
  encodeDetails,
  encodeMapping,
  mappedDataBlock,
} from './mapping';
import {
  NEEDS_CHECK_FLAG,
  SUPERBLOCK_LOCATION,
  Superblock,
  decodeSuperblock,
  encodeSuperblock,
  superblockValidator,
} from './superblock';

const SUPERBLOCK_ONLY: ReadonlySet<number> = new Set([SUPERBLOCK_LOCATION]);

export interface FormatOptions {
  dataBlockSectors: number;
  nrDataBlocks: number;
}

/** Told of every mapping change as it is made, and of every commit. */
export interface MappingChangeListener {
  mapped(id: number, vblock: number, dataBlock: number, time: number): void;
  unmapped(id: number, vblock: number): void;
  committed(sb: Superblock): void;
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
  private rootCache = { mappingRoot: -1, version: -1, roots: new Map<number, number>() };
  /** Bumped each time a changed mapping tree is stored (see `setMappingRoot`). */
  private treeVersion = 0;
  /** Device details changed in this transaction, written into the details tree at commit. */
  private readonly changedDetails = new Map<number, DeviceDetails>();
  listener: MappingChangeListener | undefined;

  private constructor(
    readonly bm: BlockManager,
    readonly tm: TransactionManager,
    readonly metadataSm: MetadataSpaceMap,
    readonly dataSm: DataSpaceMap,
    sb: Superblock,
  ) {
    this.sb = sb;
    const dataCounts = dataSm.counts;
    const mappingValue: ValueType = {
      size: 8,
      inc: (v) => dataCounts.inc(mappedDataBlock(v)),
      dec: (v) => dataCounts.dec(mappedDataBlock(v)),
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

  /**
   * Reads every node of the device trees (live and held), so that a damaged block is found at
   * open rather than on some later read. The space maps were read in full by `open`.
   */
  verifyTrees(): void {
    const seen = new Set<number>();
    const sbs = [this.sb];
    const held = this.heldSuperblock();
    if (held) sbs.push(held);
    for (const sb of sbs) {
      this.details.visitNodes(sb.deviceDetailsRoot, seen);
      this.devices.visitNodes(sb.dataMappingRoot, seen, (leaf) => {
        for (let i = 0; i < leaf.nrEntries; i++) this.mappings.visitNodes(readU64(leaf.value(i), 0), seen);
      });
    }
  }

  /** Reads a superblock without the space maps (the held metadata snapshot, or a quick peek). */
  /**
   * Sets needs_check in the committed superblock of the metadata at `path`, written in place:
   * the in-memory state of whoever failed is not to be trusted, the committed one is.
   */
  static markNeedsCheck(path: string): void {
    const bm = new BlockManager(path);
    try {
      const sb = ThinMetadata.readSuperblock(bm);
      bm.writeNow(
        SUPERBLOCK_LOCATION,
        encodeSuperblock({ ...sb, flags: sb.flags | NEEDS_CHECK_FLAG }),
        superblockValidator,
      );
    } finally {
      bm.close();
    }
  }

  static readSuperblock(bm: BlockManager, location = SUPERBLOCK_LOCATION): Superblock {
    return decodeSuperblock(bm.read(location, superblockValidator));
  }

  get dataBlockBytes(): number {
    return this.sb.dataBlockSectors * 512;
  }

  /** Root of one device's mapping tree, or undefined when the device does not exist. */
  deviceRoot(id: number, mappingRoot = this.sb.dataMappingRoot): number | undefined {
    // Reads repeat the same top-level lookup until something changes the device trees (a root
    // block shadowed in this transaction changes in place, so its location alone is no key).
    if (mappingRoot !== this.rootCache.mappingRoot || this.rootCache.version !== this.treeVersion) {
      this.rootCache = { mappingRoot, version: this.treeVersion, roots: new Map() };
    }
    const cached = this.rootCache.roots.get(id);
    if (cached !== undefined) return cached;
    const v = this.devices.lookup(mappingRoot, id);
    const root = v ? readU64(v, 0) : undefined;
    if (root !== undefined) this.rootCache.roots.set(id, root);
    return root;
  }

  /** Anything changed since the last commit: trees, counts or pending device details. */
  get hasUncommittedChanges(): boolean {
    return (
      this.tm.changedBlocks > 0 ||
      this.changedDetails.size > 0 ||
      this.dataSm.counts.changed ||
      this.metadataSm.counts.changed
    );
  }

  /**
   * Makes every change since the last commit durable: space maps are written, every block but
   * the superblock is flushed and synced, then the superblock is written and synced.
   */
  commit(): void {
    for (const [id, d] of this.changedDetails) {
      this.sb.deviceDetailsRoot = this.details.insert(this.sb.deviceDetailsRoot, id, encodeDetails(d));
    }
    this.changedDetails.clear();
    this.dataSm.commit(this.tm);
    this.metadataSm.commit(this.tm);
    this.sb.dataSpaceMap = this.dataSm.root();
    this.sb.metadataSpaceMap = this.metadataSm.root();
    this.bm.flush(SUPERBLOCK_ONLY);
    faultPoint('commit:before-superblock');
    this.bm.writeNow(SUPERBLOCK_LOCATION, encodeSuperblock(this.sb), superblockValidator);
    this.dataSm.committed();
    this.metadataSm.committed();
    this.tm.beginTransaction();
    faultPoint('commit:after-superblock');
    this.listener?.committed(this.sb);
  }

  // ---- devices (the kernel's dm-thin-metadata operations) ----

  // Every change to the live device trees ends here, after the change: a root block shadowed in
  // this transaction changes in place, so the lookup cache must forget on every store, not only
  // when the location moves.
  private setMappingRoot(root: number): void {
    this.sb.dataMappingRoot = root;
    this.treeVersion++;
  }

  deviceExists(id: number): boolean {
    return this.deviceRoot(id) !== undefined;
  }

  deviceDetails(id: number): DeviceDetails | undefined {
    const changed = this.changedDetails.get(id);
    if (changed) return { ...changed };
    const v = this.details.lookup(this.sb.deviceDetailsRoot, id);
    return v ? decodeDetails(v) : undefined;
  }

  /** Ids of every device, in order. */
  deviceIds(sb: Superblock = this.sb): number[] {
    const ids: number[] = [];
    for (const [id] of this.devices.entries(sb.dataMappingRoot)) ids.push(id);
    return ids;
  }

  createThin(id: number): void {
    this.checkNewId(id);
    const root = this.mappings.create();
    this.setMappingRoot(this.devices.insert(this.sb.dataMappingRoot, id, u64(root)));
    this.changedDetails.set(id, {
      mappedBlocks: 0,
      transactionId: this.sb.transactionId,
      creationTime: this.sb.time,
      snapshottedTime: this.sb.time,
    });
  }

  /** O(1): the snapshot shares the origin's mapping tree root, and the pool time moves on. */
  createSnap(id: number, originId: number): void {
    this.checkNewId(id);
    const originRoot = this.deviceRoot(originId);
    const origin = this.deviceDetails(originId);
    if (originRoot === undefined || !origin) throw new DeviceNotFoundError(originId);
    if (this.sb.time >= MAX_TIME)
      throw new RangeError(`pool time would pass 2^24 - 1; no more snapshots possible`);
    this.tm.inc(originRoot);
    this.setMappingRoot(this.devices.insert(this.sb.dataMappingRoot, id, u64(originRoot)));
    this.sb.time++;
    this.changedDetails.set(id, {
      mappedBlocks: origin.mappedBlocks,
      transactionId: this.sb.transactionId,
      creationTime: this.sb.time,
      snapshottedTime: this.sb.time,
    });
    this.changedDetails.set(originId, { ...origin, snapshottedTime: this.sb.time });
  }

  /**
   * O(1) revert: device `id` takes a shared copy of `toId`'s mapping tree, and the blocks only its
   * old tree held are freed. Both devices then see every block as shared, as after a snapshot.
   */
  revertDevice(id: number, toId: number): void {
    const root = this.deviceRoot(id);
    const details = this.deviceDetails(id);
    const toRoot = this.deviceRoot(toId);
    const to = this.deviceDetails(toId);
    if (root === undefined || !details) throw new DeviceNotFoundError(id);
    if (toRoot === undefined || !to) throw new DeviceNotFoundError(toId);
    if (this.sb.time >= MAX_TIME)
      throw new RangeError(`pool time would pass 2^24 - 1; no more snapshots or reverts possible`);
    // The same root already (a revert with no write since): taking a reference would leak one.
    if (root !== toRoot) {
      this.tm.inc(toRoot);
      this.setMappingRoot(this.devices.insert(this.sb.dataMappingRoot, id, u64(toRoot)));
    }
    this.sb.time++;
    this.changedDetails.set(id, { ...details, mappedBlocks: to.mappedBlocks, snapshottedTime: this.sb.time });
    this.changedDetails.set(toId, { ...to, snapshottedTime: this.sb.time });
  }

  /** Removes the device; blocks only it referenced are freed (snapshots of it are unaffected). */
  deleteDevice(id: number): void {
    const removed = this.devices.remove(this.sb.dataMappingRoot, id);
    if (!removed.removed) throw new DeviceNotFoundError(id);
    this.setMappingRoot(removed.root);
    this.sb.deviceDetailsRoot = this.details.remove(this.sb.deviceDetailsRoot, id).root;
    this.changedDetails.delete(id);
  }

  lookupMapping(id: number, vblock: number, sb: Superblock = this.sb): Mapping | undefined {
    const root = this.deviceRoot(id, sb.dataMappingRoot);
    if (root === undefined) throw new DeviceNotFoundError(id);
    return this.mappings.lookupWith(root, vblock, decodeMapping);
  }

  /**
   * The data block behind `first` when the `count` blocks from `first` are all mapped, at a time
   * ≥ `minTime`, to consecutive data blocks (one walk of the tree instead of a lookup per block);
   * otherwise undefined.
   */
  consecutiveRun(id: number, first: number, count: number, minTime: number): number | undefined {
    const root = this.deviceRoot(id);
    if (root === undefined) throw new DeviceNotFoundError(id);
    let next = first;
    let start = 0;
    for (const [vblock, value] of this.mappings.entries(root, first, first + count)) {
      if (vblock !== next || value.readUIntLE(0, 3) < minTime) return undefined;
      const dataBlock = value.readUIntLE(3, 5);
      if (vblock === first) start = dataBlock;
      else if (dataBlock !== start + (vblock - first)) return undefined;
      next++;
    }
    return next === first + count ? start : undefined;
  }

  /**
   * Maps `vblock` to `dataBlock` at the current time. The tree takes over the reference the
   * caller holds on `dataBlock` (a fresh allocation); a replaced block loses one.
   */
  insertMapping(id: number, vblock: number, dataBlock: number): void {
    const details = this.requireDetails(id);
    let inserted = false;
    const value = encodeMapping({ dataBlock, time: this.sb.time });
    this.setMappingRoot(
      this.devices.update(this.sb.dataMappingRoot, id, (old) => {
        const r = this.mappings.insertReporting(readU64(old!, 0), vblock, value);
        inserted = r.inserted;
        return u64(r.root);
      }),
    );
    if (inserted) this.changedDetails.set(id, { ...details, mappedBlocks: details.mappedBlocks + 1 });
    this.listener?.mapped(id, vblock, dataBlock, this.sb.time);
  }

  /** Unmaps `vblock`; returns whether it was mapped. */
  removeMapping(id: number, vblock: number): boolean {
    const details = this.requireDetails(id);
    if (!this.lookupMapping(id, vblock)) return false;
    this.setMappingRoot(
      this.devices.update(this.sb.dataMappingRoot, id, (old) =>
        u64(this.mappings.remove(readU64(old!, 0), vblock).root),
      ),
    );
    this.changedDetails.set(id, { ...details, mappedBlocks: details.mappedBlocks - 1 });
    this.listener?.unmapped(id, vblock);
    return true;
  }

  /** Takes the one reference on a data block that is free now and was at the last commit. */
  claimDataBlock(dataBlock: number): boolean {
    return this.dataSm.counts.claim(dataBlock);
  }

  /** The kernel's set_transaction_id: compare-and-swap on the userspace token. */
  setTransactionId(expected: number, next: number): void {
    if (this.sb.transactionId !== expected) {
      throw new TransactionIdMismatchError(expected, this.sb.transactionId);
    }
    this.sb.transactionId = next;
  }

  private requireDetails(id: number): DeviceDetails {
    const d = this.deviceDetails(id);
    if (!d) throw new DeviceNotFoundError(id);
    return d;
  }

  private checkNewId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id > MAX_DEVICE_ID) {
      throw new RangeError(`device id ${id} is outside 0..${MAX_DEVICE_ID} (24 bits)`);
    }
    if (this.deviceExists(id)) throw new DeviceExistsError(id);
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
