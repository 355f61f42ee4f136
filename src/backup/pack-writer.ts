// Writes one pack: records get their positions in call order and go out in batches, one writev
// at a time (parallel writes to one file only contend for its inode lock: with four in flight the
// kernel spent more time spinning on that lock than copying). `seal` waits for them, adds the
// index and footer, fdatasyncs, and renames the file from tmp/ into packs/. Until then the pack
// is only debris in tmp/ (the next writer removes it), so a crash never leaves a half-written
// pack where readers look.
import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { skipBytes } from '../util/buffers';
import {
  PACK_HEADER_BYTES,
  type PackEntry,
  packHeader,
  packTrailer,
  RECORD_HEADER_BYTES,
  recordHeader,
} from './pack';

export interface SealedPack {
  file: string;
  entries: PackEntry[];
  /** Size of the pack file. */
  bytes: number;
}

interface Batch {
  /** File position of the first byte of `parts`. */
  at: number;
  parts: Buffer[];
  bytes: number;
  waiters: { resolve: () => void; reject: (e: Error) => void }[];
}

export class PackWriter {
  private readonly entries: PackEntry[] = [];
  /** Bytes queued since the last batch went out (the pack header, then records). */
  private batch: Batch | undefined;
  private flushing: Promise<void> | undefined;
  private end = PACK_HEADER_BYTES;
  private failure: Error | undefined;
  private sealed = false;

  private constructor(
    private readonly handle: fsp.FileHandle,
    private readonly tmpFile: string,
    readonly file: string,
  ) {
    // The header is the first batch; a failure is kept in `failure` and reported by the next
    // append or by seal.
    this.queue(0, [packHeader()], PACK_HEADER_BYTES).catch(() => undefined);
  }

  static async create(tmpDir: string, packsDir: string): Promise<PackWriter> {
    const name = `${randomBytes(16).toString('hex')}.pack`;
    const tmpFile = path.join(tmpDir, name);
    const handle = await fsp.open(tmpFile, 'wx');
    return new PackWriter(handle, tmpFile, path.join(packsDir, name));
  }

  /** Bytes the pack will hold once every append so far has landed. */
  get bytes(): number {
    return this.end;
  }

  /**
   * Appends a record; resolves once its bytes are written (not yet synced), after which the
   * caller may reuse `payload`.
   */
  async append(hash: string, codecId: number, payload: Buffer, rawBytes: number): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.sealed) throw new Error(`pack ${this.tmpFile} is sealed`);
    const offset = this.end;
    this.end += RECORD_HEADER_BYTES + payload.length;
    this.entries.push({ hash, offset, storedBytes: payload.length, rawBytes });
    await this.queue(
      offset,
      [recordHeader(hash, codecId, payload.length), payload],
      RECORD_HEADER_BYTES + payload.length,
    );
  }

  /** Queues `bytes` in `parts` for position `at` (right after what is queued); resolves once written. */
  private queue(at: number, parts: Buffer[], bytes: number): Promise<void> {
    const written = new Promise<void>((resolve, reject) => {
      const batch = (this.batch ??= { at, parts: [], bytes: 0, waiters: [] });
      batch.parts.push(...parts);
      batch.bytes += bytes;
      batch.waiters.push({ resolve, reject });
    });
    this.flushing ??= this.flush();
    return written;
  }

  /** Writes the queued records, a batch per writev, until none are left. */
  private async flush(): Promise<void> {
    // Let the caller store the promise first: a loop that ended without awaiting would clear
    // `flushing` before it is set, and nothing would ever write again.
    await Promise.resolve();
    for (let batch = this.batch; batch; batch = this.batch) {
      this.batch = undefined;
      try {
        if (this.failure) throw this.failure;
        // A short write (the disk filled up) goes on from where it stopped, so that the error
        // that stops it is the real one (ENOSPC).
        for (let done = 0; done < batch.bytes;) {
          const rest = done ? skipBytes(batch.parts, done) : batch.parts;
          const { bytesWritten } = await this.handle.writev(rest, batch.at + done);
          if (bytesWritten === 0) throw new Error(`no progress writing at ${batch.at + done}`);
          done += bytesWritten;
        }
        for (const w of batch.waiters) w.resolve();
      } catch (e) {
        this.failure ??= new Error(`writing ${this.tmpFile}: ${(e as Error).message}`);
        for (const w of batch.waiters) w.reject(this.failure);
      }
    }
    this.flushing = undefined;
  }

  /** Every write queued so far has settled. */
  private async settled(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  /** Index, footer, fdatasync, close, rename into packs/ (the caller fsyncs that directory). */
  async seal(): Promise<SealedPack> {
    this.sealed = true;
    let trailerBytes = 0;
    try {
      await this.settled();
      if (this.failure) throw this.failure;
      const trailer = packTrailer(this.entries, this.end);
      await this.handle.write(trailer, 0, trailer.length, this.end);
      trailerBytes = trailer.length;
      await this.handle.datasync();
      await this.handle.close();
    } catch (e) {
      // (a full disk, most likely: the pack is dropped; its chunks were never named by a manifest)
      await this.handle.close().catch(() => undefined);
      await fsp.rm(this.tmpFile, { force: true });
      throw new Error(`sealing pack ${this.tmpFile}: ${(e as Error).message}`);
    }
    await fsp.rename(this.tmpFile, this.file);
    return { file: this.file, entries: this.entries, bytes: this.end + trailerBytes };
  }

  /** Drops the pack (after a failure): closes and removes the temporary file. */
  async abort(): Promise<void> {
    await this.settled();
    await this.handle.close().catch(() => undefined);
    await fsp.rm(this.tmpFile, { force: true });
  }
}
