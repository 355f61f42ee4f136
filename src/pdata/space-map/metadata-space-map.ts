import { BlockManager } from '../block-manager';
import { saltedValidator } from '../block-validator';
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
import { ENTRIES_PER_BITMAP, RefCounts } from './ref-counts';
import { SpaceMapRoot } from './sm-root';

export const metadataIndexValidator = saltedValidator('metadata index block', 160478);
const INDEX_HEADER_SIZE = 16;
export const MAX_METADATA_BITMAPS = 255;
/** 255 bitmaps × 16320 blocks: the most a metadata device can use (≈ 15.875 GiB). */
export const MAX_METADATA_BLOCKS = MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP;

/**
 * Reference counts of metadata blocks. Its index fits one block, so recording its own
 * allocations needs no tree; the overflow tree and bitmaps it writes at commit are allocated
 * from itself, which the commit loop settles by repeating until nothing moves.
 */
export class MetadataSpaceMap extends PersistentSpaceMap {
  private indexBlock = 0;
  private indexRelocated = false;

  /** A new space map for an empty metadata device; block 0 (the superblock) is in use. */
  static create(bm: BlockManager, nrBlocks: number): { sm: MetadataSpaceMap; tm: TransactionManager } {
    checkMetadataSize(nrBlocks);
    const counts = new RefCounts(nrBlocks);
    counts.inc(0);
    const sm = new MetadataSpaceMap(counts, [], 0);
    const tm = new TransactionManager(bm, counts);
    sm.attach(tm);
    sm.refCountRoot = sm.overflowTree.create();
    return { sm, tm };
  }

  static open(bm: BlockManager, root: SpaceMapRoot): { sm: MetadataSpaceMap; tm: TransactionManager } {
    checkMetadataSize(root.nrBlocks);
    const index = bm.read(root.bitmapRoot, metadataIndexValidator);
    const nrBitmaps = Math.ceil(root.nrBlocks / ENTRIES_PER_BITMAP);
    const locations: number[] = [];
    const bitmaps: Uint8Array[] = [];
    for (let i = 0; i < nrBitmaps; i++) {
      const entry = decodeIndexEntry(index, INDEX_HEADER_SIZE + i * INDEX_ENTRY_SIZE);
      if (entry.blocknr === 0) throw new MetadataInvariantError(`metadata index entry ${i} names no bitmap`);
      locations.push(entry.blocknr);
      bitmaps.push(readBitmapPayload(bm.read(entry.blocknr, bitmapValidator)));
    }
    checkBitmapCount(root.nrBlocks, bitmaps.length, 'metadata space map');
    const counts = RefCounts.load(root.nrBlocks, bitmaps);
    const sm = new MetadataSpaceMap(counts, locations, root.refCountRoot);
    sm.indexBlock = root.bitmapRoot;
    const tm = new TransactionManager(bm, counts);
    sm.attach(tm);
    sm.loadOverflow();
    return { sm, tm };
  }

  protected indexLocation(): number {
    return this.indexBlock;
  }

  /** Grows the metadata device in use (the file must already be large enough). */
  override extend(nrBlocks: number): void {
    checkMetadataSize(nrBlocks);
    super.extend(nrBlocks);
  }

  commit(tm: TransactionManager): void {
    // Placing a bitmap or the index allocates metadata blocks, which changes bitmaps: repeat
    // until a pass moves nothing. Each bitmap moves at most once per transaction.
    for (let changed = true; changed;) {
      changed = this.placeChanges(tm);
      if (!this.indexRelocated) {
        const { location } = tm.newBlock(metadataIndexValidator, 'the metadata index');
        if (this.indexBlock) tm.dec(this.indexBlock);
        this.indexBlock = location;
        this.indexRelocated = true;
        changed = true;
      }
    }
    this.writeBitmaps(tm);
    const index = tm.bm.writable(this.indexBlock, metadataIndexValidator);
    index.fill(0);
    for (let i = 0; i < this.counts.nrBitmaps; i++) {
      encodeIndexEntry(this.indexEntry(i), index, INDEX_HEADER_SIZE + i * INDEX_ENTRY_SIZE);
    }
  }

  override committed(): void {
    super.committed();
    this.indexRelocated = false;
  }
}

function checkMetadataSize(nrBlocks: number): void {
  if (nrBlocks > MAX_METADATA_BLOCKS) {
    throw new RangeError(
      `metadata space map of ${nrBlocks} blocks exceeds the format's ${MAX_METADATA_BLOCKS}`,
    );
  }
}
