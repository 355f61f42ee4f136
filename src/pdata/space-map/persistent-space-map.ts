import { BlockValidator, readU64, saltedValidator, writeU64 } from '../block-validator';
import { BTree } from '../btree/btree';
import { plainValue } from '../btree/value-type';
import { MetadataInvariantError } from '../errors';
import { TransactionManager } from '../transaction-manager';
import { BITMAP_PAYLOAD_BYTES, ENTRIES_PER_BITMAP, RefCounts } from './ref-counts';
import { SpaceMapRoot } from './sm-root';

export const bitmapValidator = saltedValidator('space map bitmap', 240779);
const BITMAP_HEADER_SIZE = 16;

/** An index entry: where one bitmap lives and a summary of its free entries. */
export interface IndexEntry {
  blocknr: number;
  nrFree: number;
  noneFreeBefore: number;
}
export const INDEX_ENTRY_SIZE = 16;

export function encodeIndexEntry(e: IndexEntry, into: Buffer, offset: number): void {
  writeU64(into, offset, e.blocknr);
  into.writeUInt32LE(e.nrFree, offset + 8);
  into.writeUInt32LE(e.noneFreeBefore, offset + 12);
}

export function decodeIndexEntry(from: Buffer, offset: number): IndexEntry {
  return {
    blocknr: readU64(from, offset),
    nrFree: from.readUInt32LE(offset + 8),
    noneFreeBefore: from.readUInt32LE(offset + 12),
  };
}

/** Values of the overflow tree: exact le32 counts. */
export const refCountValueType = plainValue(4);

export function readBitmapPayload(data: Buffer): Uint8Array {
  return Uint8Array.prototype.slice.call(data, BITMAP_HEADER_SIZE, BITMAP_HEADER_SIZE + BITMAP_PAYLOAD_BYTES);
}

/**
 * What the data and metadata space maps share: in-memory counts, bitmaps written to fresh blocks
 * at commit, and the overflow tree kept in step with counts ≥ 3.
 */
export abstract class PersistentSpaceMap {
  protected readonly relocated = new Set<number>();
  protected overflowTree!: BTree;

  protected constructor(
    readonly counts: RefCounts,
    protected bitmapLocations: number[],
    public refCountRoot: number,
  ) {}

  protected attach(tm: TransactionManager): void {
    this.overflowTree = new BTree(tm, refCountValueType);
  }

  protected loadOverflow(): void {
    const entries: [number, number][] = [];
    for (const [block, value] of this.overflowTree.entries(this.refCountRoot)) {
      const count = value.readUInt32LE(0);
      if (count < 3) throw new MetadataInvariantError(`overflow count ${count} < 3 for block ${block}`);
      entries.push([block, count]);
    }
    this.counts.loadOverflow(entries);
  }

  /** Where the index lives: the index tree's root (data) or the index block (metadata). */
  protected abstract indexLocation(): number;

  root(): SpaceMapRoot {
    return {
      nrBlocks: this.counts.nrBlocks,
      nrAllocated: this.counts.nrAllocated,
      bitmapRoot: this.indexLocation(),
      refCountRoot: this.refCountRoot,
    };
  }

  /** Grows the space map; the new blocks are free. */
  extend(nrBlocks: number): void {
    this.counts.extend(nrBlocks);
  }

  /** Writes this space map's changes; the caller then flushes and writes the superblock. */
  abstract commit(tm: TransactionManager): void;

  /** After the superblock is durable. */
  committed(): void {
    this.counts.markCommitted();
    this.relocated.clear();
  }

  // Gives each changed bitmap a block of this transaction and syncs the overflow tree.
  // Returns whether anything moved (which may have changed metadata counts).
  protected placeChanges(tm: TransactionManager): boolean {
    let changed = false;
    for (const index of this.counts.dirtyBitmaps()) {
      if (this.relocated.has(index)) continue;
      const { location } = tm.newBlock(bitmapValidator, 'a space map bitmap');
      const old = this.bitmapLocations[index];
      if (old) tm.dec(old);
      this.bitmapLocations[index] = location;
      this.relocated.add(index);
      changed = true;
    }
    for (const [block, count] of this.counts.takeOverflowChanges()) {
      if (count > 0) {
        const value = Buffer.alloc(4);
        value.writeUInt32LE(count, 0);
        this.refCountRoot = this.overflowTree.insert(this.refCountRoot, block, value);
      } else {
        this.refCountRoot = this.overflowTree.remove(this.refCountRoot, block).root;
      }
      changed = true;
    }
    return changed;
  }

  protected writeBitmaps(tm: TransactionManager): void {
    for (const index of this.relocated) {
      const location = this.bitmapLocations[index];
      const data = tm.bm.writable(location, bitmapValidator);
      data.fill(0, 0, BITMAP_HEADER_SIZE);
      data.set(this.counts.bitmap(index), BITMAP_HEADER_SIZE);
    }
  }

  protected indexEntry(index: number): IndexEntry {
    return {
      blocknr: this.bitmapLocations[index],
      nrFree: this.counts.bitmapNrFree(index),
      noneFreeBefore: this.counts.bitmapFirstFree(index),
    };
  }
}

export function checkBitmapCount(nrBlocks: number, found: number, what: string): void {
  const want = Math.ceil(nrBlocks / ENTRIES_PER_BITMAP);
  if (found !== want)
    throw new MetadataInvariantError(`${what}: ${found} bitmaps for ${nrBlocks} blocks, expected ${want}`);
}

export type { BlockValidator };
