import { BTree } from '../btree/btree';
import { plainValue } from '../btree/value-type';
import { MetadataInvariantError } from '../errors';
import { TransactionManager } from '../transaction-manager';
import {
  INDEX_ENTRY_SIZE,
  PersistentSpaceMap,
  bitmapValidator,
  checkBitmapCount,
  decodeIndexEntry,
  encodeIndexEntry,
  readBitmapPayload,
} from './persistent-space-map';
import { RefCounts } from './ref-counts';
import { SpaceMapRoot } from './sm-root';

/**
 * Reference counts of data blocks (the kernel's disk space map): bitmaps found through an index
 * tree keyed by bitmap number, all stored in metadata blocks.
 */
export class DataSpaceMap extends PersistentSpaceMap {
  private indexTree!: BTree;
  private indexRoot = 0;

  static create(tm: TransactionManager, nrBlocks: number): DataSpaceMap {
    const sm = new DataSpaceMap(new RefCounts(nrBlocks), [], 0);
    sm.attach(tm);
    sm.indexRoot = sm.indexTree.create();
    sm.refCountRoot = sm.overflowTree.create();
    return sm;
  }

  static open(tm: TransactionManager, root: SpaceMapRoot): DataSpaceMap {
    const indexTree = new BTree(tm, plainValue(INDEX_ENTRY_SIZE));
    const locations: number[] = [];
    const bitmaps: Uint8Array[] = [];
    for (const [key, value] of indexTree.entries(root.bitmapRoot)) {
      if (key !== bitmaps.length)
        throw new MetadataInvariantError(`data space map index skips from ${bitmaps.length} to ${key}`);
      const entry = decodeIndexEntry(value, 0);
      locations.push(entry.blocknr);
      bitmaps.push(readBitmapPayload(tm.read(entry.blocknr, bitmapValidator)));
    }
    checkBitmapCount(root.nrBlocks, bitmaps.length, 'data space map');
    const sm = new DataSpaceMap(RefCounts.load(root.nrBlocks, bitmaps), locations, root.refCountRoot);
    sm.attach(tm);
    sm.indexRoot = root.bitmapRoot;
    sm.loadOverflow();
    return sm;
  }

  protected override attach(tm: TransactionManager): void {
    super.attach(tm);
    this.indexTree = new BTree(tm, plainValue(INDEX_ENTRY_SIZE));
  }

  protected indexLocation(): number {
    return this.indexRoot;
  }

  /** Data counts do not change while committing, so one pass places everything. */
  commit(tm: TransactionManager): void {
    this.placeChanges(tm);
    this.writeBitmaps(tm);
    const value = Buffer.alloc(INDEX_ENTRY_SIZE);
    for (const index of [...this.relocated].sort((a, b) => a - b)) {
      encodeIndexEntry(this.indexEntry(index), value, 0);
      this.indexRoot = this.indexTree.insert(this.indexRoot, index, value);
    }
  }
}
