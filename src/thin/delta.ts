import { diffTrees } from '../pdata/btree/diff';
import { mappedDataBlock } from './mapping';
import { DeviceNotFoundError } from './errors';
import type { ThinMetadata } from './metadata';
import { Superblock } from './superblock';

/** A run of virtual blocks where two devices differ (thin_delta's vocabulary). */
export interface DeltaRange {
  begin: number;
  length: number;
  kind: 'left_only' | 'right_only' | 'different';
}

export interface MappedRange {
  begin: number;
  length: number;
}

/**
 * Where device `a` and device `b` map differently, read from the trees under `sb`, optionally
 * only for virtual blocks in [from, to).
 */
export function deltaRanges(
  md: ThinMetadata,
  sb: Superblock,
  a: number,
  b: number,
  from = 0,
  to = Number.MAX_SAFE_INTEGER,
): DeltaRange[] {
  const rootA = md.deviceRoot(a, sb.dataMappingRoot);
  if (rootA === undefined) throw new DeviceNotFoundError(a);
  const rootB = md.deviceRoot(b, sb.dataMappingRoot);
  if (rootB === undefined) throw new DeviceNotFoundError(b);
  const ranges: DeltaRange[] = [];
  diffTrees(
    md.mappings,
    rootA,
    rootB,
    (x, y) => mappedDataBlock(x) === mappedDataBlock(y),
    (vblock, va, vb) => {
      const kind = !vb ? 'left_only' : !va ? 'right_only' : 'different';
      const last = ranges[ranges.length - 1];
      if (last && last.kind === kind && last.begin + last.length === vblock) last.length++;
      else ranges.push({ begin: vblock, length: 1, kind });
    },
    from,
    to,
  );
  return ranges;
}

/** Runs of mapped virtual blocks of one device. */
export function allocatedRanges(md: ThinMetadata, sb: Superblock, id: number): MappedRange[] {
  const root = md.deviceRoot(id, sb.dataMappingRoot);
  if (root === undefined) throw new DeviceNotFoundError(id);
  const ranges: MappedRange[] = [];
  for (const [vblock] of md.mappings.entries(root)) {
    const last = ranges[ranges.length - 1];
    if (last && last.begin + last.length === vblock) last.length++;
    else ranges.push({ begin: vblock, length: 1 });
  }
  return ranges;
}

/**
 * Runs of mapped virtual blocks of device `id` whose data block is set in `written` (bit b of
 * byte b >> 3): what changed since an era, given the era's written-since bitmap.
 */
export function writtenRanges(
  md: ThinMetadata,
  sb: Superblock,
  id: number,
  written: Uint8Array,
): MappedRange[] {
  const root = md.deviceRoot(id, sb.dataMappingRoot);
  if (root === undefined) throw new DeviceNotFoundError(id);
  const ranges: MappedRange[] = [];
  for (const [vblock, value] of md.mappings.entries(root)) {
    const b = mappedDataBlock(value);
    if (!(written[b >> 3] & (1 << (b & 7)))) continue;
    const last = ranges[ranges.length - 1];
    if (last && last.begin + last.length === vblock) last.length++;
    else ranges.push({ begin: vblock, length: 1 });
  }
  return ranges;
}
