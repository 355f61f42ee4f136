import { BlockValidator, METADATA_BLOCK_SIZE, readU64, saltedValidator, writeU64 } from '../block-validator';
import { BlockCorruptError } from '../errors';

// Layout of a B-tree node: 32-byte header, then max_entries le64 keys, then max_entries values.
export const NODE_HEADER_SIZE = 32;
export const INTERNAL_NODE = 1;
export const LEAF_NODE = 2;
const BTREE_NODE_SALT = 121107;

/** The largest multiple of 3 entries that fits a block: keeps the max/3 minimum fill exact. */
export function maxEntriesFor(valueSize: number): number {
  const fit = Math.floor((METADATA_BLOCK_SIZE - NODE_HEADER_SIZE) / (8 + valueSize));
  return 3 * Math.floor(fit / 3);
}

const salted = saltedValidator('btree node', BTREE_NODE_SALT);

/** Checksum plus the header rules every reader relies on before trusting offsets. */
export const nodeValidator: BlockValidator = {
  name: 'btree node',
  prepareForWrite: salted.prepareForWrite,
  check(block, location) {
    salted.check(block, location);
    const node = new NodeView(block);
    const flags = node.flags;
    if (flags !== INTERNAL_NODE && flags !== LEAF_NODE) {
      throw new BlockCorruptError('btree node', location, `bad node flags ${flags}`);
    }
    const max = node.maxEntries;
    const valueSize = node.valueSize;
    if (valueSize === 0 || NODE_HEADER_SIZE + max * (8 + valueSize) > METADATA_BLOCK_SIZE) {
      throw new BlockCorruptError('btree node', location, `max entries ${max} with value size ${valueSize}`);
    }
    if (!node.isLeaf && valueSize !== 8) {
      throw new BlockCorruptError('btree node', location, `internal node with value size ${valueSize}`);
    }
    if (node.nrEntries > max) {
      throw new BlockCorruptError('btree node', location, `${node.nrEntries} entries exceed max ${max}`);
    }
  },
};

/** Typed access to a node held in a 4 KiB buffer; writes go straight into the buffer. */
export class NodeView {
  constructor(readonly data: Buffer) {}

  static format(data: Buffer, kind: typeof INTERNAL_NODE | typeof LEAF_NODE, valueSize: number): NodeView {
    data.fill(0);
    data.writeUInt32LE(kind, 4);
    data.writeUInt32LE(0, 16);
    data.writeUInt32LE(maxEntriesFor(valueSize), 20);
    data.writeUInt32LE(valueSize, 24);
    return new NodeView(data);
  }

  get flags(): number {
    return this.data.readUInt32LE(4);
  }
  get isLeaf(): boolean {
    return this.flags === LEAF_NODE;
  }
  get nrEntries(): number {
    return this.data.readUInt32LE(16);
  }
  set nrEntries(n: number) {
    this.data.writeUInt32LE(n, 16);
  }
  get maxEntries(): number {
    return this.data.readUInt32LE(20);
  }
  get valueSize(): number {
    return this.data.readUInt32LE(24);
  }
  get minEntries(): number {
    return Math.floor(this.maxEntries / 3);
  }

  key(i: number): number {
    return readU64(this.data, NODE_HEADER_SIZE + 8 * i);
  }
  setKey(i: number, key: number): void {
    writeU64(this.data, NODE_HEADER_SIZE + 8 * i, key);
  }
  valueOffset(i: number): number {
    return NODE_HEADER_SIZE + 8 * this.maxEntries + this.valueSize * i;
  }
  /** A view into the node (not a copy). */
  value(i: number): Buffer {
    const off = this.valueOffset(i);
    return this.data.subarray(off, off + this.valueSize);
  }
  setValue(i: number, value: Buffer): void {
    value.copy(this.data, this.valueOffset(i), 0, this.valueSize);
  }
  /** Internal nodes (and leaves of block-pointer trees) hold le64 block numbers. */
  child(i: number): number {
    return readU64(this.data, this.valueOffset(i));
  }
  setChild(i: number, location: number): void {
    writeU64(this.data, this.valueOffset(i), location);
  }

  /** Index of the largest key ≤ `key`, or -1 when every key is larger. */
  lowerBound(key: number): number {
    let lo = 0;
    let hi = this.nrEntries - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.key(mid) <= key) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found;
  }

  insertAt(i: number, key: number, value: Buffer): void {
    this.shiftEntries(i, i + 1, this.nrEntries - i);
    this.nrEntries = this.nrEntries + 1;
    this.setKey(i, key);
    this.setValue(i, value);
  }

  removeAt(i: number): void {
    this.shiftEntries(i + 1, i, this.nrEntries - i - 1);
    this.nrEntries = this.nrEntries - 1;
    this.clearEntries(this.nrEntries, 1);
  }

  /** Moves `count` entries from `from` in `src` to the end of this node. */
  appendFrom(src: NodeView, from: number, count: number): void {
    const at = this.nrEntries;
    src.data.copy(
      this.data,
      NODE_HEADER_SIZE + 8 * at,
      NODE_HEADER_SIZE + 8 * from,
      NODE_HEADER_SIZE + 8 * (from + count),
    );
    src.data.copy(this.data, this.valueOffset(at), src.valueOffset(from), src.valueOffset(from + count));
    this.nrEntries = at + count;
  }

  /** Moves the last `count` entries of `src` to the front of this node. */
  prependFrom(src: NodeView, count: number): void {
    const from = src.nrEntries - count;
    this.shiftEntries(0, count, this.nrEntries);
    src.data.copy(
      this.data,
      NODE_HEADER_SIZE,
      NODE_HEADER_SIZE + 8 * from,
      NODE_HEADER_SIZE + 8 * (from + count),
    );
    src.data.copy(this.data, this.valueOffset(0), src.valueOffset(from), src.valueOffset(from + count));
    this.nrEntries = this.nrEntries + count;
  }

  /** Drops entries from `from` to the end (their bytes are zeroed, as the tools write them). */
  truncate(from: number): void {
    this.clearEntries(from, this.nrEntries - from);
    this.nrEntries = from;
  }

  /** Drops the first `count` entries. */
  dropFront(count: number): void {
    const n = this.nrEntries;
    this.shiftEntries(count, 0, n - count);
    this.nrEntries = n - count;
    this.clearEntries(n - count, count);
  }

  private shiftEntries(from: number, to: number, count: number): void {
    if (count <= 0 || from === to) return;
    const keys = NODE_HEADER_SIZE;
    this.data.copyWithin(keys + 8 * to, keys + 8 * from, keys + 8 * (from + count));
    this.data.copyWithin(this.valueOffset(to), this.valueOffset(from), this.valueOffset(from + count));
  }

  private clearEntries(from: number, count: number): void {
    if (count <= 0) return;
    this.data.fill(0, NODE_HEADER_SIZE + 8 * from, NODE_HEADER_SIZE + 8 * (from + count));
    this.data.fill(0, this.valueOffset(from), this.valueOffset(from + count));
  }
}

export function u64Value(n: number): Buffer {
  const b = Buffer.alloc(8);
  writeU64(b, 0, n);
  return b;
}
