// The one contract between the pool and the NBD exporter: neither side imports the other.

/** A run of bytes with one allocation state, as reported by `blockStatus`. */
export interface Extent {
  offset: number;
  length: number;
  /** No storage behind the range (a thin hole or a sparse-file hole). */
  hole: boolean;
  /** The range is known to read as zeros (always true for holes). */
  zero: boolean;
}

export interface WriteOptions {
  /** Force unit access: durable before the promise resolves. */
  fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** The range must stay allocated (no hole punching). */
  noHole?: boolean;
}

/**
 * A byte-addressed block device. Offsets and lengths are in bytes; callers keep them
 * 512-byte aligned and inside `sizeBytes`, implementations still reject anything else
 * with a `RangeError`. A device must not keep a caller's buffer after the call resolves:
 * the NBD server reuses its buffers for the next request.
 */
export interface BlockDevice {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  read(offset: number, length: number): Promise<Buffer>;
  /** Optional fast path: read into a buffer the caller owns (recycled READ buffers). */
  readInto?(offset: number, target: Buffer): Promise<void>;
  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void>;
  /** Optional fast path: a write given as several buffers, written without joining them. */
  writeVectored?(offset: number, parts: Buffer[], options?: WriteOptions): Promise<void>;
  trim(offset: number, length: number, options?: WriteOptions): Promise<void>;
  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void>;
  /** Everything acknowledged so far is durable when this resolves. */
  flush(): Promise<void>;
  /** Extents covering [offset, offset+length) in order; may stop early but never returns nothing. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
}
