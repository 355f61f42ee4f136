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

/** The parts of `ranges` outside every range of `remove` (both sorted and merged). */
export function subtractRanges(ranges: ByteRange[], remove: ByteRange[]): ByteRange[] {
  const out: ByteRange[] = [];
  let j = 0;
  for (const r of ranges) {
    let at = r.offset;
    const end = r.offset + r.length;
    while (j < remove.length && remove[j].offset + remove[j].length <= at) j++;
    for (let k = j; k < remove.length && remove[k].offset < end; k++) {
      if (remove[k].offset > at) out.push({ offset: at, length: remove[k].offset - at });
      at = Math.max(at, remove[k].offset + remove[k].length);
    }
    if (at < end) out.push({ offset: at, length: end - at });
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

/** One NBD request covering whole chunks that touch each other. */
export interface ReadRequest extends ByteRange {
  pieces: ByteRange[];
}

/**
 * Groups chunks (in volume order) into reads of at most `maxBytes`: only chunks that touch are
 * joined, so nothing outside the listed ranges is read, while a run of small chunks (a small grid,
 * or a delta range that spans grid lines) costs one request instead of one each.
 */
export function groupReads(pieces: ByteRange[], maxBytes: number): ReadRequest[] {
  const out: ReadRequest[] = [];
  let open: ReadRequest | undefined;
  for (const p of pieces) {
    if (open && open.offset + open.length === p.offset && open.length + p.length <= maxBytes) {
      open.length += p.length;
      open.pieces.push(p);
    } else {
      open = { offset: p.offset, length: p.length, pieces: [p] };
      out.push(open);
    }
  }
  return out;
}
