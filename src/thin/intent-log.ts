// The catalogue's write-ahead ring: each device-set change is made durable here (one write and
// one fdatasync of a preallocated file, no file-system journal commit) before the pool commits
// it, and reaches the LMDB store later, in batches. The LMDB state names the last record it
// holds; a record after that one is replayed on open, settled by what the metadata holds.
//
// The file is SLOTS slots of 4 KiB. A record takes one or more adjacent slots and starts with a
// 32-byte header: magic, version, seq (u64), payload length, crc32c of the header (crc field
// zero) and the payload. A record never wraps; one that does not fit before the end starts at
// slot 0. Records the store does not hold yet are never overwritten.
import fs from 'node:fs';
import path from 'node:path';
import { crc32c } from '../pdata/crc32c';
import { fsyncDir } from '../util/atomic-file';

const MAGIC = 0x4c495054; // "TPIL"
const VERSION = 1;
const SLOT = 4096;
const HEADER = 32;
export const INTENT_LOG_SLOTS = 2048;

/** A record and its place in the sequence. */
export interface Logged<T> {
  seq: number;
  record: T;
}

export class IntentLogError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'IntentLogError';
  }
}

interface Held {
  seq: number;
  slot: number;
  slots: number;
}

export class IntentLog<T> {
  private head = 0;
  private nextSeq: number;
  /** Records on file that the store does not hold yet, oldest first. */
  private held: Held[] = [];

  private constructor(
    readonly file: string,
    private fd: number,
    private readonly slots: number,
    private readonly found: Logged<T>[],
    lastSeq: number,
  ) {
    this.nextSeq = lastSeq + 1;
  }

  /**
   * Opens (creating, unless read-only) the log in `file`. `stored` is the last record the store
   * holds (undefined: it holds all): the records after it, in order, are `pending`.
   */
  static open<T>(
    file: string,
    stored: number | undefined,
    options: { readOnly?: boolean; slots?: number } = {},
  ): IntentLog<T> | undefined {
    const slots = options.slots ?? INTENT_LOG_SLOTS;
    if (!fs.existsSync(file)) {
      if (options.readOnly) return undefined;
      create(file, slots);
    }
    const fd = fs.openSync(file, options.readOnly ? 'r' : 'r+');
    try {
      const size = fs.fstatSync(fd).size;
      if (size !== slots * SLOT)
        throw new IntentLogError(`${file}: ${size} bytes, expected ${slots * SLOT} (damaged?)`);
      const all = readRecords<T>(fd, slots);
      const lastOnFile = all.reduce((m, r) => Math.max(m, r.seq), 0);
      const storedSeq = stored ?? lastOnFile;
      const pending: Logged<T>[] = [];
      for (const r of all.filter((x) => x.seq > storedSeq).sort((a, b) => a.seq - b.seq)) {
        // Records are written one after the other, each synced before the next: a gap means the
        // rest are from an earlier lap, or damage.
        if (r.seq !== storedSeq + 1 + pending.length) break;
        pending.push(r);
      }
      const log = new IntentLog<T>(file, fd, slots, pending, Math.max(storedSeq, lastOnFile));
      const pendingSeqs = new Set(pending.map((p) => p.seq));
      log.held = all.filter((r) => pendingSeqs.has(r.seq)).sort((a, b) => a.seq - b.seq);
      const last = log.held[log.held.length - 1];
      log.head = last ? last.slot + last.slots : 0;
      return log;
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** The records after the store's last one, as found on open. */
  get pending(): readonly Logged<T>[] {
    return this.found;
  }

  /** The seq of the last record written. */
  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  /**
   * Writes the record and syncs it; returns its seq. When it would overwrite a record the store
   * does not hold, `makeRoom` (which must store and `release` them) runs first.
   */
  append(record: T, makeRoom?: () => void): number {
    const payload = encode(record);
    const n = slotsFor(payload);
    if (n > this.slots / 4)
      throw new IntentLogError(`a record of ${payload.length} bytes is too large for ${this.file}`);
    let slot = this.place(n);
    if (slot === undefined && makeRoom) {
      makeRoom();
      slot = this.place(n);
    }
    if (slot === undefined) throw new IntentLogError(`${this.file}: no room; release records first`);
    const seq = this.nextSeq;
    const buf = Buffer.alloc(n * SLOT);
    buf.writeUInt32LE(MAGIC, 0);
    buf.writeUInt16LE(VERSION, 4);
    buf.writeBigUInt64LE(BigInt(seq), 8);
    buf.writeUInt32LE(payload.length, 16);
    payload.copy(buf, HEADER);
    buf.writeUInt32LE(crc32c(buf.subarray(0, HEADER + payload.length)), 20);
    let done = 0;
    while (done < buf.length) done += fs.writeSync(this.fd, buf, done, buf.length - done, slot * SLOT + done);
    fs.fdatasyncSync(this.fd);
    this.nextSeq++;
    this.held.push({ seq, slot, slots: n });
    this.head = slot + n;
    return seq;
  }

  /** The store now holds every record up to `seq`: their slots may be reused. */
  release(seq: number): void {
    this.held = this.held.filter((h) => h.seq > seq);
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }

  // Where n slots go next, or undefined if every place would overwrite a held record.
  private place(n: number): number | undefined {
    const start = this.head + n <= this.slots ? this.head : 0;
    const clash = this.held.some((h) => h.slot < start + n && start < h.slot + h.slots);
    return clash ? undefined : start;
  }
}

const encode = (record: unknown) => Buffer.from(JSON.stringify(record));

const slotsFor = (payload: Buffer) => Math.ceil((HEADER + payload.length) / SLOT);

// Zeros written for real, not a sparse file: a later overwrite then changes no file-system
// metadata, so its fdatasync is one device flush.
function create(file: string, slots: number): void {
  const tmp = `${file}.new`;
  const fd = fs.openSync(tmp, 'w');
  try {
    const zeros = Buffer.alloc(256 * SLOT);
    for (let s = 0; s < slots; s += 256)
      fs.writeSync(fd, zeros, 0, Math.min(256, slots - s) * SLOT, s * SLOT);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(path.dirname(file));
}

function readRecords<T>(fd: number, slots: number): (Logged<T> & Held)[] {
  const buf = Buffer.alloc(slots * SLOT);
  fs.readSync(fd, buf, 0, buf.length, 0);
  const out: (Logged<T> & Held)[] = [];
  for (let slot = 0; slot < slots; slot++) {
    const at = slot * SLOT;
    if (buf.readUInt32LE(at) !== MAGIC || buf.readUInt16LE(at + 4) !== VERSION) continue;
    const length = buf.readUInt32LE(at + 16);
    const end = at + HEADER + length;
    if (end > buf.length) continue;
    const record = Buffer.from(buf.subarray(at, end));
    const crc = record.readUInt32LE(20);
    record.writeUInt32LE(0, 20);
    if (crc32c(record) !== crc) continue;
    let parsed: T;
    try {
      parsed = JSON.parse(record.subarray(HEADER).toString('utf8')) as T;
    } catch {
      continue;
    }
    const n = Math.ceil((HEADER + length) / SLOT);
    out.push({ seq: Number(buf.readBigUInt64LE(at + 8)), record: parsed, slot, slots: n });
    slot += n - 1;
  }
  return out;
}
