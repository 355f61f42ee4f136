// Reference counts for a space map, held in memory in the on-disk bitmap encoding (2 bits per
// block, 0.25 byte each), with exact counts ≥ 3 in an overflow map. Keeping the committed copy
// of every bitmap changed in this transaction enforces the allocation rule: a block freed in
// this transaction is not reused before the commit that frees it on disk.

export const ENTRIES_PER_BITMAP = 16320;
export const BITMAP_PAYLOAD_BYTES = ENTRIES_PER_BITMAP / 4;
const MAX_COUNT = 0xffffffff;

function entryOf(bitmap: Uint8Array, entry: number): number {
  const byte = bitmap[entry >> 2];
  const shift = (entry & 3) << 1;
  // The lower bit position holds the high bit of the count.
  return (((byte >> shift) & 1) << 1) | ((byte >> (shift + 1)) & 1);
}

function setEntry(bitmap: Uint8Array, entry: number, value: number): void {
  const shift = (entry & 3) << 1;
  const bits = ((value >> 1) & 1) | ((value & 1) << 1);
  bitmap[entry >> 2] = (bitmap[entry >> 2] & ~(3 << shift)) | (bits << shift);
}

export class RefCounts {
  private bitmaps: Uint8Array[] = [];
  private committed: (Uint8Array | undefined)[] = [];
  private readonly dirty = new Set<number>();
  private readonly overflow = new Map<number, number>();
  private readonly overflowDirty = new Set<number>();
  private used: number[] = [];
  private allocated = 0;
  private cursor = 0;
  /** Freed in this transaction, so not yet reusable. */
  private freedPending = 0;

  private nrBlocksValue = 0;

  constructor(nrBlocks: number) {
    this.extend(nrBlocks);
  }

  get nrBlocks(): number {
    return this.nrBlocksValue;
  }
  /** Blocks with a non-zero count. */
  get nrAllocated(): number {
    return this.allocated;
  }
  get nrFree(): number {
    return this.nrBlocksValue - this.allocated;
  }
  /** Free blocks that may be handed out now (excludes those freed in this transaction). */
  get nrAllocatable(): number {
    return this.nrFree - this.freedPending;
  }
  get nrBitmaps(): number {
    return this.bitmaps.length;
  }

  /** Grows the map; new blocks are free. Shrinking is not supported. */
  extend(nrBlocks: number): void {
    if (nrBlocks < this.nrBlocksValue)
      throw new RangeError(`cannot shrink a space map (${this.nrBlocksValue} → ${nrBlocks})`);
    const want = Math.ceil(nrBlocks / ENTRIES_PER_BITMAP);
    while (this.bitmaps.length < want) {
      this.bitmaps.push(new Uint8Array(BITMAP_PAYLOAD_BYTES));
      this.committed.push(undefined);
      this.used.push(0);
      this.dirty.add(this.bitmaps.length - 1);
    }
    this.nrBlocksValue = nrBlocks;
  }

  count(block: number): number {
    this.checkBlock(block);
    const e = entryOf(this.bitmaps[Math.floor(block / ENTRIES_PER_BITMAP)], block % ENTRIES_PER_BITMAP);
    return e < 3 ? e : this.overflow.get(block)!;
  }

  inc(block: number, by = 1): void {
    const c = this.count(block);
    if (c + by > MAX_COUNT) throw new RangeError(`reference count of block ${block} would overflow`);
    this.setCount(block, c + by);
  }

  dec(block: number): void {
    const c = this.count(block);
    if (c === 0) throw new RangeError(`reference count of block ${block} is already 0`);
    this.setCount(block, c - 1);
  }

  setCount(block: number, count: number): void {
    this.checkBlock(block);
    const index = Math.floor(block / ENTRIES_PER_BITMAP);
    const entry = block % ENTRIES_PER_BITMAP;
    const bitmap = this.writableBitmap(index);
    const before = entryOf(bitmap, entry);
    const after = count < 3 ? count : 3;
    if (before >= 3 || after >= 3) {
      if (after >= 3) this.overflow.set(block, count);
      else this.overflow.delete(block);
      this.overflowDirty.add(block);
    }
    if (before !== after) setEntry(bitmap, entry, after);
    if (before === 0 && after !== 0) {
      this.used[index]++;
      this.allocated++;
      // A block freed earlier in this transaction and referenced again is no longer pending.
      const committed = this.committed[index];
      if (committed && entryOf(committed, entry) !== 0) this.freedPending--;
    } else if (before !== 0 && after === 0) {
      this.used[index]--;
      this.allocated--;
      const committed = this.committed[index];
      if (committed && entryOf(committed, entry) !== 0) this.freedPending++;
    }
  }

  /** Like `allocate`, for a chosen block: false (nothing changed) unless it may be handed out. */
  claim(block: number): boolean {
    if (!Number.isSafeInteger(block) || block < 0 || block >= this.nrBlocksValue) return false;
    const index = Math.floor(block / ENTRIES_PER_BITMAP);
    const entry = block % ENTRIES_PER_BITMAP;
    const committed = this.committed[index];
    if (entryOf(this.bitmaps[index], entry) !== 0 || (committed && entryOf(committed, entry) !== 0))
      return false;
    this.setCount(block, 1);
    return true;
  }

  /** A block free now and in the last committed state, with count set to 1; undefined when full. */
  allocate(): number | undefined {
    const nrBitmaps = this.bitmaps.length;
    const start = this.cursor;
    for (let step = 0; step <= nrBitmaps; step++) {
      const index = (Math.floor(start / ENTRIES_PER_BITMAP) + step) % nrBitmaps;
      if (this.used[index] >= ENTRIES_PER_BITMAP) continue;
      const first = step === 0 ? start % ENTRIES_PER_BITMAP : 0;
      const found = this.findFree(index, first);
      if (found !== undefined) {
        this.setCount(found, 1);
        this.cursor = found + 1 >= this.nrBlocksValue ? 0 : found + 1;
        return found;
      }
    }
    // The cursor's own bitmap before the cursor was not searched in the first pass.
    const found = this.findFree(Math.floor(start / ENTRIES_PER_BITMAP), 0);
    if (found !== undefined) {
      this.setCount(found, 1);
      this.cursor = found + 1;
      return found;
    }
    return undefined;
  }

  // ---- persistence hooks ----

  /** Whether any count changed since the last commit. */
  get changed(): boolean {
    return this.dirty.size > 0 || this.overflowDirty.size > 0;
  }

  /** Bitmaps changed since the last commit, in index order. */
  dirtyBitmaps(): number[] {
    return [...this.dirty].sort((a, b) => a - b);
  }

  bitmap(index: number): Uint8Array {
    return this.bitmaps[index];
  }

  /** nr_free as the kernel keeps it: entries with count 0 in the whole bitmap, tail included. */
  bitmapNrFree(index: number): number {
    return ENTRIES_PER_BITMAP - this.used[index];
  }

  /** A conservative none_free_before hint: the first free entry of the bitmap. */
  bitmapFirstFree(index: number): number {
    const bitmap = this.bitmaps[index];
    for (let byte = 0; byte < BITMAP_PAYLOAD_BYTES; byte++) {
      if (bitmap[byte] === 0xff) continue;
      for (let e = byte * 4; e < byte * 4 + 4; e++) if (entryOf(bitmap, e) === 0) return e;
    }
    return ENTRIES_PER_BITMAP;
  }

  /** Calls `fn` for every block in order with its count (a fast linear scan for checkers). */
  forEachCount(fn: (block: number, count: number) => void): void {
    for (let index = 0; index < this.bitmaps.length; index++) {
      const bitmap = this.bitmaps[index];
      const base = index * ENTRIES_PER_BITMAP;
      const limit = Math.min(ENTRIES_PER_BITMAP, this.nrBlocksValue - base);
      for (let e = 0; e < limit; e++) {
        const c = entryOf(bitmap, e);
        fn(base + e, c < 3 ? c : this.overflow.get(base + e)!);
      }
    }
  }

  /** Overflow entries changed since they were last taken: [block, count or 0 when gone]. */
  takeOverflowChanges(): [number, number][] {
    const changes: [number, number][] = [];
    for (const block of [...this.overflowDirty].sort((a, b) => a - b)) {
      changes.push([block, this.overflow.get(block) ?? 0]);
    }
    this.overflowDirty.clear();
    return changes;
  }

  /** The current state becomes the committed one. */
  markCommitted(): void {
    for (const index of this.dirty) this.committed[index] = undefined;
    this.dirty.clear();
    this.overflowDirty.clear();
    this.freedPending = 0;
  }

  /** Exact counts ≥ 3, read from the overflow tree after the bitmaps. */
  loadOverflow(entries: Iterable<[number, number]>): void {
    for (const [block, count] of entries) this.overflow.set(block, count);
  }

  /** Builds counts from the bitmaps a space map holds on disk (overflow counts come later). */
  static load(nrBlocks: number, bitmaps: Uint8Array[]): RefCounts {
    const counts = new RefCounts(0);
    counts.nrBlocksValue = nrBlocks;
    counts.bitmaps = bitmaps.map((b) => Uint8Array.from(b));
    counts.committed = bitmaps.map(() => undefined);
    counts.used = counts.bitmaps.map((bitmap, index) => {
      let used = 0;
      const limit = Math.min(ENTRIES_PER_BITMAP, nrBlocks - index * ENTRIES_PER_BITMAP);
      for (let e = 0; e < limit; e++) if (entryOf(bitmap, e) !== 0) used++;
      return used;
    });
    counts.allocated = counts.used.reduce((a, b) => a + b, 0);
    return counts;
  }

  private writableBitmap(index: number): Uint8Array {
    if (!this.dirty.has(index)) {
      this.committed[index] = Uint8Array.from(this.bitmaps[index]);
      this.dirty.add(index);
    }
    return this.bitmaps[index];
  }

  private findFree(index: number, firstEntry: number): number | undefined {
    const bitmap = this.bitmaps[index];
    const committed = this.committed[index];
    const base = index * ENTRIES_PER_BITMAP;
    const limit = Math.min(ENTRIES_PER_BITMAP, this.nrBlocksValue - base);
    for (let e = firstEntry; e < limit;) {
      if ((e & 3) === 0 && bitmap[e >> 2] === 0xff) {
        e += 4;
        continue;
      }
      if (entryOf(bitmap, e) === 0 && (!committed || entryOf(committed, e) === 0)) return base + e;
      e++;
    }
    return undefined;
  }

  private checkBlock(block: number): void {
    if (!(block >= 0 && block < this.nrBlocksValue) || block % 1 !== 0) {
      throw new RangeError(`block ${block} outside the space map (${this.nrBlocksValue} blocks)`);
    }
  }
}
