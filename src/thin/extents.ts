/** A byte range and whether it lies in one of the marked blocks. */
export interface MarkedExtent {
  offset: number;
  length: number;
  marked: boolean;
}

/**
 * Turns sorted runs of marked blocks (mapped, changed, …) into byte extents covering exactly
 * [offset, offset+length), marked and unmarked in turn, neighbours of one kind merged.
 */
export function blockRunsToExtents(
  runs: Iterable<{ begin: number; length: number }>,
  blockBytes: number,
  offset: number,
  length: number,
): MarkedExtent[] {
  const end = offset + length;
  const out: MarkedExtent[] = [];
  const push = (from: number, to: number, marked: boolean) => {
    from = Math.max(from, offset);
    to = Math.min(to, end);
    if (to <= from) return;
    const last = out[out.length - 1];
    if (last && last.marked === marked && last.offset + last.length === from) last.length += to - from;
    else out.push({ offset: from, length: to - from, marked });
  };
  let cursor = offset;
  for (const run of runs) {
    push(cursor, run.begin * blockBytes, false);
    push(run.begin * blockBytes, (run.begin + run.length) * blockBytes, true);
    cursor = (run.begin + run.length) * blockBytes;
  }
  push(cursor, end, false);
  return out;
}
