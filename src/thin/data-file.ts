// The pool's data file (or block device): block-addressed reads and writes, and the one place
// that knows whether anything written since the last sync still has to reach the disk.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { deviceSizeBytes } from '../pdata/device-size';
import { skipBytes } from '../util/buffers';
import { SyncReadPolicy } from '../util/sync-read-policy';
import { PoolError } from './errors';

export interface DataFileOptions {
  readOnly?: boolean;
  /** Reads and writes up to this size run synchronously (see PoolOpenOptions.syncIoMaxBytes). */
  syncIoMaxBytes?: number;
}

export class DataFile {
  // Set when a write starts and again when it ends, so that clearing it before a sync starts
  // leaves it set for every write that sync may not cover.
  private dirty = false;
  private syncs = 0;
  private syncing = 0;
  private readonly syncReads: SyncReadPolicy;
  private readonly syncIoMaxBytes: number;
  /** Told of the blocks a write covers before it is issued (era tracking). */
  onWrite: ((firstBlock: number, count: number) => Promise<void> | undefined) | undefined;

  private constructor(
    readonly path: string,
    private readonly handle: fsp.FileHandle,
    readonly blockBytes: number,
    options: DataFileOptions,
  ) {
    this.syncIoMaxBytes = options.syncIoMaxBytes ?? 0;
    this.syncReads = new SyncReadPolicy(this.syncIoMaxBytes);
  }

  static async open(path: string, blockBytes: number, options: DataFileOptions = {}): Promise<DataFile> {
    const handle = await fsp.open(path, options.readOnly ? 'r' : 'r+');
    return new DataFile(path, handle, blockBytes, options);
  }

  /** Bytes the file or device holds now. */
  get sizeBytes(): number {
    return deviceSizeBytes(this.handle.fd, this.path);
  }

  /** Whole data blocks the file or device holds now. */
  get nrBlocks(): number {
    return Math.floor(this.sizeBytes / this.blockBytes);
  }

  /** Writes not yet covered by a finished sync (one that is running counts as unfinished). */
  get hasUnsyncedWrites(): boolean {
    return this.dirty || this.syncing > 0;
  }

  /** Syncs of the data file since it was opened. */
  get syncCount(): number {
    return this.syncs;
  }

  /** Reads on the event loop when the read policy says so (then returns undefined), else async. */
  read(dataBlock: number, offsetInBlock: number, into: Buffer): Promise<void> | undefined {
    const base = dataBlock * this.blockBytes + offsetInBlock;
    if (!this.syncReads.runsSync(into.length)) return this.readAsync(dataBlock, base, into);
    for (let done = 0; done < into.length;) {
      const n = fs.readSync(this.handle.fd, into, done, into.length - done, base + done);
      if (n === 0) throw shortRead(dataBlock);
      done += n;
    }
    return undefined;
  }

  private async readAsync(dataBlock: number, base: number, into: Buffer): Promise<void> {
    for (let done = 0; done < into.length;) {
      const { bytesRead } = await this.handle.read(into, done, into.length - done, base + done);
      if (bytesRead === 0) throw shortRead(dataBlock);
      done += bytesRead;
    }
  }

  /** Writes `data` (or its pieces, in order) at a place in a data block. */
  async write(dataBlock: number, offsetInBlock: number, data: Buffer | Buffer[]): Promise<void> {
    const position = dataBlock * this.blockBytes + offsetInBlock;
    this.dirty = true;
    let parts = Array.isArray(data) ? data : [data];
    const total = parts.reduce((n, p) => n + p.length, 0);
    if (this.onWrite && total > 0) {
      const first = dataBlock + Math.floor(offsetInBlock / this.blockBytes);
      const last = dataBlock + Math.floor((offsetInBlock + total - 1) / this.blockBytes);
      const recorded = this.onWrite(first, last - first + 1);
      if (recorded) await recorded;
    }
    const sync = total <= this.syncIoMaxBytes;
    // writev may write less than asked; carry on from where it stopped.
    for (let done = 0; done < total;) {
      const n = sync
        ? fs.writevSync(this.handle.fd, parts, position + done)
        : (await this.handle.writev(parts, position + done)).bytesWritten;
      done += n;
      if (done < total) parts = skipBytes(parts, n);
    }
    this.dirty = true;
  }

  /** Writes of an earlier process (replayed from the journal) may still be in the page cache. */
  assumeUnsynced(): void {
    this.dirty = true;
  }

  /**
   * Makes every write that finished before the call durable. A failed sync leaves the writes
   * marked unsynced (the kernel may have dropped them: the caller decides what that means).
   */
  async sync(): Promise<void> {
    if (!this.dirty) return;
    this.dirty = false;
    this.syncing++;
    try {
      await this.handle.datasync();
    } catch (e) {
      this.dirty = true;
      throw e;
    } finally {
      this.syncing--;
    }
    this.syncs++;
  }

  /** Grows a regular file to `bytes` (a block device has the size it has). */
  async grow(bytes: number): Promise<void> {
    if (!fs.fstatSync(this.handle.fd).isFile()) return;
    if (bytes < this.sizeBytes) throw new PoolError('shrinking the data file is not supported', 'EINVAL');
    await this.handle.truncate(bytes);
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

function shortRead(dataBlock: number): PoolError {
  return new PoolError(`short read of data block ${dataBlock}`, 'EIO');
}
