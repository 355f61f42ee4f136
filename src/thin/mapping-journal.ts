import crypto from 'node:crypto';
import fs from 'node:fs';
import { logger } from '../log';
import { crc32c } from '../pdata/crc32c';
import { currentBootId } from './boot-id';
import type { MappingChangeListener, ThinMetadata } from './metadata';
import { Superblock, encodeSuperblock } from './superblock';

// Mapping changes made since the last commit, appended to a file (written, not synced) before
// the write that made them is acknowledged. A killed server loses its in-memory metadata but
// not the page cache: the data it wrote and this journal survive, so the next open replays the
// journal and no acknowledged write is lost. A client that reconnects and flushes on the new
// server would otherwise be told that writes the old one never committed are durable.
// After a reboot the page cache is gone too: a journal from another boot is ignored.

const MAGIC = 0x4a505454;
const VERSION = 1;
const HEADER_BYTES = 64;
const RECORD_BYTES = 32;
const MAP = 1;
const UNMAP = 2;

const log = logger('pool');

export interface ReplayResult {
  /** Records applied to the metadata (the caller syncs data and commits). */
  applied: number;
  /** Why nothing (or only a prefix) was applied, for the log. */
  note?: string;
}

// Which committed state the records apply to: a record replayed on top of a later commit (one
// that already holds its change) would count a block twice.
function superblockIdentity(sb: Superblock): number {
  return crc32c(encodeSuperblock(sb));
}

export class MappingJournal implements MappingChangeListener {
  private nonce = 0;
  /** Records on file in this generation. */
  private records = 0;
  // Records not yet on file. They go out in one write from a microtask queued by the first of
  // them: whatever acknowledges a write runs in a later microtask than that write's records.
  private pending = Buffer.alloc(64 * RECORD_BYTES);
  private nrPending = 0;
  // Nonce then record: the checksum covers both, so records of an earlier generation past the
  // current end never pass for current ones.
  private readonly scratch = Buffer.alloc(4 + RECORD_BYTES);
  // From a microtask a throw would take the server down: a journal that cannot be written is
  // dropped instead (the pool is then as safe against a kill as without one).
  private readonly persistNow = () => this.guard(() => this.persist());
  private failed: Error | undefined;

  private constructor(
    private readonly fd: number,
    private readonly bootId: Buffer,
  ) {}

  /** Opens (or creates) the journal; undefined where the boot cannot be identified. */
  static open(path: string): MappingJournal | undefined {
    const bootId = currentBootId();
    if (!bootId) return undefined;
    return new MappingJournal(fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600), bootId);
  }

  /**
   * Applies the records written on top of the committed state `md` was opened at, in order,
   * stopping at the first one that is torn, of another generation or does not fit the metadata.
   */
  replay(md: ThinMetadata): ReplayResult {
    const header = Buffer.alloc(HEADER_BYTES);
    if (fs.readSync(this.fd, header, 0, HEADER_BYTES, 0) < HEADER_BYTES) return { applied: 0 };
    if (header.readUInt32LE(0) !== MAGIC || header.readUInt32LE(60) !== crc32c(header.subarray(0, 60)))
      return { applied: 0, note: 'journal header unreadable' };
    if (header.readUInt32LE(4) !== VERSION)
      return { applied: 0, note: `journal version ${header.readUInt32LE(4)} unknown` };
    if (!header.subarray(8, 24).equals(this.bootId))
      return { applied: 0, note: 'journal written before a reboot (unflushed writes are gone)' };
    if (header.readUInt32LE(28) !== superblockIdentity(md.sb)) return { applied: 0 };
    const nonce = header.readUInt32LE(24);
    const scratch = Buffer.alloc(4 + RECORD_BYTES);
    scratch.writeUInt32LE(nonce, 0);
    let applied = 0;
    for (let pos = HEADER_BYTES; ; pos += RECORD_BYTES) {
      if (fs.readSync(this.fd, scratch, 4, RECORD_BYTES, pos) < RECORD_BYTES) break;
      if (scratch.readUInt32LE(4 + 28) !== crc32c(scratch.subarray(0, 4 + 28))) break;
      const problem = applyRecord(md, scratch.subarray(4));
      if (problem) return { applied, note: `replay stopped at record ${applied}: ${problem}` };
      applied++;
    }
    return { applied };
  }

  mapped(id: number, vblock: number, dataBlock: number, time: number): void {
    this.append(MAP, id, vblock, dataBlock, time);
  }

  unmapped(id: number, vblock: number): void {
    this.append(UNMAP, id, vblock, 0, 0);
  }

  /** Starts a new generation on top of the state just committed. */
  committed(sb: Superblock): void {
    if (!this.failed) this.guard(() => this.startGeneration(sb));
  }

  private startGeneration(sb: Superblock): void {
    this.nonce = crypto.randomBytes(4).readUInt32LE(0);
    this.records = 0;
    this.nrPending = 0; // committed with the rest
    const header = Buffer.alloc(HEADER_BYTES);
    header.writeUInt32LE(MAGIC, 0);
    header.writeUInt32LE(VERSION, 4);
    this.bootId.copy(header, 8);
    header.writeUInt32LE(this.nonce, 24);
    header.writeUInt32LE(superblockIdentity(sb), 28);
    header.writeUIntLE(sb.transactionId, 32, 6);
    header.writeUInt32LE(crc32c(header.subarray(0, 60)), 60);
    fs.writeSync(this.fd, header, 0, HEADER_BYTES, 0);
  }

  close(): void {
    if (!this.failed) this.guard(() => this.persist());
    fs.closeSync(this.fd);
  }

  /** Writes the pending records (before anything that depends on them is acknowledged). */
  persist(): void {
    if (this.nrPending === 0) return;
    const bytes = this.nrPending * RECORD_BYTES;
    const pos = HEADER_BYTES + this.records * RECORD_BYTES;
    for (let at = 0; at < bytes;) at += fs.writeSync(this.fd, this.pending, at, bytes - at, pos + at);
    this.records += this.nrPending;
    this.nrPending = 0;
  }

  // After a failure the header is left alone: once a later commit lands it names an older state,
  // so none of its records are replayed; before that they are a true prefix of what was done.
  private guard(write: () => void): void {
    try {
      write();
    } catch (e) {
      this.failed = e as Error;
      log.error('mapping journal write failed; journaling stops until the pool is reopened', {
        error: this.failed.message,
      });
    }
  }

  private append(kind: number, id: number, vblock: number, dataBlock: number, time: number): void {
    if (this.failed) return;
    const s = this.scratch;
    s.fill(0);
    s.writeUInt32LE(this.nonce, 0);
    s.writeUInt8(kind, 4);
    s.writeUInt32LE(id, 8);
    s.writeUIntLE(vblock, 12, 6);
    s.writeUIntLE(dataBlock, 20, 6);
    s.writeUInt32LE(time, 28);
    s.writeUInt32LE(crc32c(s.subarray(0, 32)), 32);
    if (this.nrPending === 0) queueMicrotask(this.persistNow);
    if ((this.nrPending + 1) * RECORD_BYTES > this.pending.length) {
      const grown = Buffer.alloc(this.pending.length * 2);
      this.pending.copy(grown);
      this.pending = grown;
    }
    s.copy(this.pending, this.nrPending * RECORD_BYTES, 4);
    this.nrPending++;
  }
}

// One record against the metadata; a message when it does not fit (nothing changed then).
function applyRecord(md: ThinMetadata, r: Buffer): string | undefined {
  const kind = r.readUInt8(0);
  const id = r.readUInt32LE(4);
  const vblock = r.readUIntLE(8, 6);
  if (!md.deviceExists(id)) return `device ${id} does not exist`;
  if (kind === UNMAP)
    return md.removeMapping(id, vblock) ? undefined : `block ${vblock} of ${id} is not mapped`;
  if (kind !== MAP) return `unknown record kind ${kind}`;
  const dataBlock = r.readUIntLE(16, 6);
  const time = r.readUInt32LE(24);
  if (time !== md.sb.time) return `time ${time} is not the pool's ${md.sb.time}`;
  if (!md.claimDataBlock(dataBlock)) return `data block ${dataBlock} is not free`;
  md.insertMapping(id, vblock, dataBlock);
  return undefined;
}
