// Byte ranges: cutting the metadata service's extents into chunks on a fixed grid, and working
// out which pieces of a backup chain are still visible once later backups are laid over earlier ones.

export interface ByteRange {
  offset: number;
  length: number;
}

/**
 * Cuts ranges at every multiple of `chunkBytes`, so a chunk never straddles a grid cell. The
 * same grid in every backup of a repository keeps the overlay bookkeeping per cell small.
 */
export function cutOnGrid(ranges: ByteRange[], chunkBytes: number): ByteRange[] {
  const out: ByteRange[] = [];
  for (const r of ranges) {
    let at = r.offset;
    const end = r.offset + r.length;
    while (at < end) {
      const cellEnd = (Math.floor(at / chunkBytes) + 1) * chunkBytes;
      const next = Math.min(end, cellEnd);
      out.push({ offset: at, length: next - at });
      at = next;
    }
  }
  return out;
}

/** Merges touching or overlapping ranges (input in any order). */
export function mergeRanges(ranges: ByteRange[]): ByteRange[] {
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
  const out: ByteRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length)
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    else out.push({ ...r });
  }
  return out;
}

export function totalBytes(ranges: ByteRange[]): number {
  return ranges.reduce((sum, r) => sum + r.length, 0);
}

/**
 * Which parts of the volume are already claimed, kept per grid cell. Laying backups newest first,
 * `claim` returns the parts of a chunk that no newer backup has written.
 */
export class Coverage {
  private readonly cells = new Map<number, ByteRange[]>();

  constructor(private readonly cellBytes: number) {}

  /** Marks `range` (inside one cell) as covered; returns the parts that were not covered before. */
  claim(range: ByteRange): ByteRange[] {
    const cell = Math.floor(range.offset / this.cellBytes);
    if (Math.floor((range.offset + range.length - 1) / this.cellBytes) !== cell)
      throw new RangeError('a chunk crosses a grid cell');
    const covered = this.cells.get(cell) ?? [];
    const free: ByteRange[] = [];
    let at = range.offset;
    const end = range.offset + range.length;
    for (const c of covered) {
      if (c.offset + c.length <= at) continue;
      if (c.offset >= end) break;
      if (c.offset > at) free.push({ offset: at, length: c.offset - at });
      at = Math.max(at, c.offset + c.length);
    }
    if (at < end) free.push({ offset: at, length: end - at });
    this.cells.set(cell, mergeRanges([...covered, range]));
    return free;
  }
}
