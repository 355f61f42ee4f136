import fs from 'node:fs';
import { BlockValidator, METADATA_BLOCK_SIZE } from './block-validator';
import { deviceSizeBytes } from './device-size';
import { MetadataIoError, MetadataReadOnlyError } from './errors';

interface CachedBlock {
  data: Buffer;
  validator: BlockValidator;
  /** Read since eviction last passed it (a second chance, as in CLOCK). */
  used: boolean;
}

export interface BlockManagerOptions {
  readOnly?: boolean;
  /** Clean blocks kept in memory; dirty blocks stay until flushed. */
  cacheBlocks?: number;
}

/**
 * 4 KiB metadata blocks over a file or block device, with a bounded LRU cache of clean blocks.
 * I/O is synchronous: metadata blocks are small and mostly cached, and a synchronous tree walk
 * cannot interleave with another one.
 */
export class BlockManager {
  readonly nrBlocks: number;
  readonly readOnly: boolean;
  private readonly cache = new Map<number, CachedBlock>();
  private readonly cacheLimit: number;
  /** Locations of the dirty blocks: a commit visits these, not the whole cache. */
  private readonly dirty = new Set<number>();
  private fd: number;
  // A failed write or sync leaves blocks marked clean that may never reach the device, and the
  // kernel reports a failed sync only once: nothing written through this manager may be trusted
  // to be durable afterwards, so every later flush fails too.
  private writeFailure: Error | undefined;
  stats = { reads: 0, writes: 0, syncs: 0 };

  constructor(
    readonly path: string,
    options: BlockManagerOptions = {},
  ) {
    this.readOnly = options.readOnly ?? false;
    this.cacheLimit = options.cacheBlocks ?? 16384;
    this.fd = fs.openSync(path, this.readOnly ? 'r' : 'r+');
    this.nrBlocks = Math.floor(deviceSizeBytes(this.fd, path) / METADATA_BLOCK_SIZE);
  }

  /** A validated, cached block. Callers must not modify it unless they went through `writable`. */
  read(location: number, validator: BlockValidator): Buffer {
    const hit = this.cache.get(location);
    if (hit) {
      // Marking costs less than moving the entry to the end of the map on every hit (a tree
      // lookup on the I/O path reads two to four cached blocks).
      hit.used = true;
      if (hit.validator !== validator) {
        if (!this.dirty.has(location)) validator.check(hit.data, location);
        hit.validator = validator;
      }
      return hit.data;
    }
    const data = this.readRaw(location);
    validator.check(data, location);
    this.insert(location, { data, validator, used: false });
    return data;
  }

  /** Unvalidated bytes straight from the device (superblock probing, checkers). */
  readRaw(location: number): Buffer {
    this.checkLocation(location);
    const data = Buffer.allocUnsafe(METADATA_BLOCK_SIZE);
    const n = fs.readSync(this.fd, data, 0, METADATA_BLOCK_SIZE, location * METADATA_BLOCK_SIZE);
    if (n !== METADATA_BLOCK_SIZE) throw new MetadataIoError(`${this.path}: short read of block ${location}`);
    this.stats.reads++;
    return data;
  }

  /** The block, to be modified in place and written at the next flush. */
  writable(location: number, validator: BlockValidator): Buffer {
    const data = this.read(location, validator);
    this.dirty.add(location);
    return data;
  }

  /** A zero-filled block that replaces whatever was at `location` (a freshly allocated block). */
  zeroed(location: number, validator: BlockValidator): Buffer {
    this.checkLocation(location);
    this.dirty.delete(location);
    this.cache.delete(location);
    const data = Buffer.alloc(METADATA_BLOCK_SIZE);
    this.insert(location, { data, validator, used: false });
    this.dirty.add(location);
    return data;
  }

  /** Writes every dirty block except those in `except`, then syncs the device. */
  flush(except: ReadonlySet<number> = new Set()): void {
    this.checkNoWriteFailure();
    const locations = [...this.dirty].filter((location) => !except.has(location));
    locations.sort((a, b) => a - b);
    // Adjacent blocks go out in one write.
    for (let i = 0; i < locations.length;) {
      let j = i + 1;
      while (j < locations.length && locations[j] === locations[j - 1] + 1) j++;
      const run = locations.slice(i, j).map((location) => this.seal(location));
      this.writeAt(locations[i], run.length === 1 ? run[0] : Buffer.concat(run));
      i = j;
    }
    this.sync();
    this.evict();
  }

  /** Seals and writes one block now, then syncs: the superblock, last in a commit. */
  writeNow(location: number, data: Buffer, validator: BlockValidator): void {
    this.checkNoWriteFailure();
    validator.prepareForWrite(data, location);
    this.writeAt(location, data);
    this.sync();
    this.dirty.delete(location);
    this.cache.delete(location);
    this.insert(location, { data: Buffer.from(data), validator, used: false });
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }

  private seal(location: number): Buffer {
    const entry = this.cache.get(location)!;
    entry.validator.prepareForWrite(entry.data, location);
    this.dirty.delete(location);
    return entry.data;
  }

  private writeAt(location: number, data: Buffer): void {
    if (this.readOnly) throw new MetadataReadOnlyError(this.path, `write block ${location}`);
    let done = 0;
    try {
      while (done < data.length) {
        done += fs.writeSync(this.fd, data, done, data.length - done, location * METADATA_BLOCK_SIZE + done);
      }
    } catch (e) {
      this.writeFailure ??= e as Error;
      throw e;
    }
    this.stats.writes += data.length / METADATA_BLOCK_SIZE;
  }

  private sync(): void {
    try {
      fs.fsyncSync(this.fd);
    } catch (e) {
      this.writeFailure ??= e as Error;
      throw e;
    }
    this.stats.syncs++;
  }

  private checkNoWriteFailure(): void {
    if (!this.writeFailure) return;
    throw new MetadataIoError(
      `${this.path}: an earlier metadata write failed (${this.writeFailure.message}); reopen it`,
      (this.writeFailure as NodeJS.ErrnoException).code,
    );
  }

  private insert(location: number, entry: CachedBlock): void {
    this.cache.set(location, entry);
    // Evict in batches so that a cache full of dirty blocks is not rescanned on every insert.
    if (this.cache.size > this.cacheLimit + this.dirty.size + (this.cacheLimit >> 3)) this.evict();
  }

  private evict(): void {
    let excess = this.cache.size - this.dirty.size - this.cacheLimit;
    if (excess <= 0) return;
    // Oldest first; a block read since the last pass moves to the end instead (re-inserted
    // entries come round again in this loop, unmarked, so it ends).
    for (const [location, entry] of this.cache) {
      if (excess <= 0) break;
      if (this.dirty.has(location)) continue;
      this.cache.delete(location);
      if (entry.used) {
        entry.used = false;
        this.cache.set(location, entry);
      } else excess--;
    }
  }

  private checkLocation(location: number): void {
    if (!Number.isInteger(location) || location < 0 || location >= this.nrBlocks) {
      throw new RangeError(
        `${this.path}: block ${location} outside the metadata device (${this.nrBlocks} blocks)`,
      );
    }
  }
}
