/** How a tree's values reference other things, so sharing and freeing keep reference counts right. */
export interface ValueType {
  /** Bytes per value in a leaf. */
  readonly size: number;
  /** A shared leaf was copied: every value in it gains a reference. */
  inc?(value: Buffer): void;
  /** A value left the tree (removed, overwritten, or its leaf was freed). */
  dec?(value: Buffer): void;
  /** Overwriting a value with an equal one must not drop its reference. */
  equal?(a: Buffer, b: Buffer): boolean;
}

/** Plain values that reference nothing (device details, index entries, counts). */
export function plainValue(size: number): ValueType {
  return { size };
}
