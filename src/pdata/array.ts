import { METADATA_BLOCK_SIZE, readU64, saltedValidator } from './block-validator';
import { BTree } from './btree/btree';
import { u64Value } from './btree/node';
import { BlockCorruptError, MetadataInvariantError } from './errors';
import { TransactionManager } from './transaction-manager';

// dm-persistent-data's array: fixed-size values packed into array blocks (a 24-byte header,
// then the values), the blocks found through a B-tree keyed by block index. Only the tree root is
// stored; the number of entries is the owner's to remember.
const ARRAY_SALT = 595846735;
export const ARRAY_HEADER_SIZE = 24;

const salted = saltedValidator('array block', ARRAY_SALT, 16);

export const arrayBlockValidator = {
  name: 'array block',
  prepareForWrite: salted.prepareForWrite,
  check(block: Buffer, location: number) {
    salted.check(block, location);
    const max = block.readUInt32LE(4);
    const n = block.readUInt32LE(8);
    const size = block.readUInt32LE(12);
    if (size === 0 || ARRAY_HEADER_SIZE + max * size > METADATA_BLOCK_SIZE || n > max)
      throw new BlockCorruptError('array block', location, `max ${max}, entries ${n}, value size ${size}`);
  },
};

export function entriesPerArrayBlock(valueSize: number): number {
  return Math.floor((METADATA_BLOCK_SIZE - ARRAY_HEADER_SIZE) / valueSize);
}

export class PersistentArray {
  readonly perBlock: number;
  /** Block index → array block location; array blocks hold no references themselves. */
  readonly tree: BTree;

  constructor(
    readonly tm: TransactionManager,
    readonly valueSize: number,
  ) {
    this.perBlock = entriesPerArrayBlock(valueSize);
    this.tree = new BTree(tm, {
      size: 8,
      inc: (v) => tm.inc(readU64(v, 0)),
      dec: (v) => tm.dec(readU64(v, 0)),
      equal: (a, b) => a.equals(b),
    });
  }

  /**
   * A new array of `nrEntries` copies of `fill`. Every full block is one shared block (its count
   * is the number of indices using it), so an empty array costs a few blocks whatever its size;
   * the first change to a shared block copies it.
   */
  create(nrEntries: number, fill: Buffer): number {
    return this.grow(this.tree.create(), 0, nrEntries, fill);
  }

  /** Grows an array of `nrEntries` to `newNrEntries`, the new entries copies of `fill`. */
  grow(root: number, nrEntries: number, newNrEntries: number, fill: Buffer): number {
    if (newNrEntries < nrEntries) throw new MetadataInvariantError('an array cannot shrink');
    let next = nrEntries;
    const partial = nrEntries % this.perBlock;
    if (partial && newNrEntries > nrEntries) {
      const blockIndex = Math.floor(nrEntries / this.perBlock);
      const upTo = Math.min(this.perBlock, partial + (newNrEntries - nrEntries));
      root = this.tree.update(root, blockIndex, (old) => {
        if (!old) throw new MetadataInvariantError(`array block ${blockIndex} is missing`);
        const shadow = this.tm.shadow(readU64(old, 0), arrayBlockValidator);
        for (let i = partial; i < upTo; i++) fill.copy(shadow.data, ARRAY_HEADER_SIZE + i * this.valueSize);
        shadow.data.writeUInt32LE(upTo, 8);
        return u64Value(shadow.location);
      });
      next = blockIndex * this.perBlock + upTo;
    }
    let shared: number | undefined;
    for (; next + this.perBlock <= newNrEntries; next += this.perBlock) {
      if (shared === undefined) shared = this.newBlock(this.perBlock, fill);
      else this.tm.inc(shared);
      root = this.tree.insert(root, next / this.perBlock, u64Value(shared));
    }
    if (next < newNrEntries)
      root = this.tree.insert(root, next / this.perBlock, u64Value(this.newBlock(newNrEntries - next, fill)));
    return root;
  }

  /** The value at `index` (a copy). */
  get(root: number, index: number): Buffer {
    const block = this.readBlock(root, Math.floor(index / this.perBlock));
    const at = this.offsetOf(block, index);
    return Buffer.from(block.subarray(at, at + this.valueSize));
  }

  /**
   * Changes values in place of their blocks: `change(block, offset, index)` is called for each of
   * the ascending `indices` with the writable block holding it. One shadow per block touched.
   */
  update(
    root: number,
    indices: Iterable<number>,
    change: (data: Buffer, offset: number, index: number) => void,
  ): number {
    let current: { blockIndex: number; data: Buffer } | undefined;
    for (const index of indices) {
      const blockIndex = Math.floor(index / this.perBlock);
      if (current?.blockIndex !== blockIndex) {
        let data: Buffer | undefined;
        // The leaf is shadowed (and a shared leaf's values gain their references) before the
        // array block is: the block's count is then the true number of trees using it.
        root = this.tree.update(root, blockIndex, (old) => {
          if (!old) throw new MetadataInvariantError(`array index ${index} is beyond the array`);
          const shadow = this.tm.shadow(readU64(old, 0), arrayBlockValidator);
          data = shadow.data;
          return u64Value(shadow.location);
        });
        current = { blockIndex, data: data! };
      }
      change(current.data, this.offsetOf(current.data, index), index);
    }
    return root;
  }

  /** Each block in index order: its index, its bytes (a view) and how many values it holds. */
  *blocks(root: number): Generator<{ blockIndex: number; data: Buffer; nrEntries: number }> {
    for (const [blockIndex, value] of this.tree.entries(root)) {
      const data = this.tm.read(readU64(value, 0), arrayBlockValidator);
      yield { blockIndex, data, nrEntries: data.readUInt32LE(8) };
    }
  }

  /** Drops one reference to the array (its blocks go with the last one). */
  del(root: number): void {
    this.tree.del(root);
  }

  private readBlock(root: number, blockIndex: number): Buffer {
    const value = this.tree.lookup(root, blockIndex);
    if (!value) throw new MetadataInvariantError(`array block ${blockIndex} is missing`);
    return this.tm.read(readU64(value, 0), arrayBlockValidator);
  }

  private offsetOf(block: Buffer, index: number): number {
    const i = index % this.perBlock;
    if (i >= block.readUInt32LE(8))
      throw new MetadataInvariantError(`array index ${index} is beyond the array`);
    return ARRAY_HEADER_SIZE + i * this.valueSize;
  }

  private newBlock(nrEntries: number, fill: Buffer): number {
    const { location, data } = this.tm.newBlock(arrayBlockValidator, 'an array block');
    data.writeUInt32LE(this.perBlock, 4);
    data.writeUInt32LE(nrEntries, 8);
    data.writeUInt32LE(this.valueSize, 12);
    for (let i = 0; i < nrEntries; i++) fill.copy(data, ARRAY_HEADER_SIZE + i * this.valueSize);
    return location;
  }
}
