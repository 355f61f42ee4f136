import { readU64, writeU64 } from '../block-validator';

/** The 32 bytes that locate a space map on disk (stored in a 128-byte superblock field). */
export interface SpaceMapRoot {
  nrBlocks: number;
  nrAllocated: number;
  /** Data space map: root of the index tree. Metadata space map: the index block. */
  bitmapRoot: number;
  /** Root of the tree of exact counts for blocks whose count is 3 or more. */
  refCountRoot: number;
}

export const SM_ROOT_FIELD_SIZE = 128;

export function encodeSpaceMapRoot(root: SpaceMapRoot, into: Buffer, offset: number): void {
  into.fill(0, offset, offset + SM_ROOT_FIELD_SIZE);
  writeU64(into, offset, root.nrBlocks);
  writeU64(into, offset + 8, root.nrAllocated);
  writeU64(into, offset + 16, root.bitmapRoot);
  writeU64(into, offset + 24, root.refCountRoot);
}

export function decodeSpaceMapRoot(from: Buffer, offset: number): SpaceMapRoot {
  return {
    nrBlocks: readU64(from, offset),
    nrAllocated: readU64(from, offset + 8),
    bitmapRoot: readU64(from, offset + 16),
    refCountRoot: readU64(from, offset + 24),
  };
}
