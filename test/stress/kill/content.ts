// What one device must hold, sector by sector, across kills. The load never has two requests in
// flight on the same sector, so after a kill each sector holds either its known value or the value
// of the one request the kill cut short; nothing else is acceptable.
export const SECTOR = 512;

/** Recognisable write contents: (tag, word index) in every 8 bytes, so a lost write names itself. */
export function fillPattern(buf: Buffer, tag: number): Buffer {
  for (let i = 0; i + 8 <= buf.length; i += 8) {
    buf.writeUInt32LE(tag, i);
    buf.writeUInt32LE(i >>> 3, i + 4);
  }
  return buf;
}

/** A change in flight: `data` for a write, none for a trim or zeroing (reads back as zeros). */
export interface Change {
  offset: number;
  length: number;
  data?: Buffer;
}

export interface Mismatch {
  sector: number;
  /** Ack number of the last acknowledged change of that sector (0: never written). */
  lastAck: number;
  /** Whether an acknowledged FLUSH covered that change. */
  flushed: boolean;
  expected: string;
  got: string;
  /** The last acknowledged changes (and those cut short) that covered the sector, oldest first. */
  history: string[];
}

const HISTORY = 400;

const describe = (b: Buffer) => (b.every((x) => x === 0) ? 'zeros' : `tag ${b.readUInt32LE(0)}`);

export class Content {
  expected: Buffer;
  /** Sectors whose value is not known: taken into `expected` from what the next check reads. */
  unknown: Uint8Array;
  /** Per sector, the ack number of the last acknowledged change. */
  ackOf: Float64Array;
  /** Highest ack number an acknowledged FLUSH of this device covers. */
  flushedAck = 0;
  /** Changes cut short by the kill: each of their sectors may hold the old or the new value. */
  cutShort: Change[] = [];
  /** Recent acknowledged changes, for the failure report. */
  private history: { ack: number; change: Change }[] = [];

  constructor(sizeBytes: number) {
    this.expected = Buffer.alloc(sizeBytes);
    this.unknown = new Uint8Array(sizeBytes / SECTOR);
    this.ackOf = new Float64Array(sizeBytes / SECTOR);
  }

  get sizeBytes(): number {
    return this.expected.length;
  }

  /** A copy (for a snapshot, or a volume made from one); acks start afresh, as on a new device. */
  clone(): Content {
    const c = new Content(this.sizeBytes);
    this.expected.copy(c.expected);
    c.unknown.set(this.unknown);
    return c;
  }

  /** Grown devices read zeros past their old end. */
  grow(sizeBytes: number): void {
    if (sizeBytes <= this.sizeBytes) return;
    const next = new Content(sizeBytes);
    this.expected.copy(next.expected);
    next.unknown.set(this.unknown);
    next.ackOf.set(this.ackOf);
    next.flushedAck = this.flushedAck;
    next.cutShort = this.cutShort;
    Object.assign(this, { expected: next.expected, unknown: next.unknown, ackOf: next.ackOf });
  }

  markUnknown(offset: number, length: number): void {
    this.unknown.fill(1, offset / SECTOR, Math.min((offset + length) / SECTOR, this.unknown.length));
  }

  apply(change: Change, ack: number): void {
    const end = Math.min(change.offset + change.length, this.sizeBytes);
    if (change.data) change.data.copy(this.expected, change.offset, 0, end - change.offset);
    else this.expected.fill(0, change.offset, end);
    this.ackOf.fill(ack, change.offset / SECTOR, end / SECTOR);
    this.unknown.fill(0, change.offset / SECTOR, end / SECTOR);
    this.history.push({ ack, change });
    if (this.history.length > 2 * HISTORY) this.history = this.history.slice(-HISTORY);
  }

  /**
   * Compares what the device reads at `offset` with what it must hold; the first sector that is
   * neither its known value, nor an unknown one, nor the new value of a change cut short.
   */
  check(got: Buffer, offset = 0): Mismatch | undefined {
    const want = this.expected.subarray(offset, offset + got.length);
    if (got.equals(want)) return undefined;
    for (let at = 0; at < got.length; at += SECTOR) {
      const g = got.subarray(at, at + SECTOR);
      const abs = offset + at;
      const s = abs / SECTOR;
      if (this.unknown[s] || g.equals(want.subarray(at, at + SECTOR))) continue;
      if (this.cutShort.some((c) => abs >= c.offset && abs < c.offset + c.length && matches(c, abs, g)))
        continue;
      return {
        sector: s,
        lastAck: this.ackOf[s],
        flushed: this.ackOf[s] > 0 && this.ackOf[s] <= this.flushedAck,
        expected: describe(want.subarray(at, at + SECTOR)),
        got: describe(g),
        history: [
          ...this.history.filter((h) => covers(h.change, abs)).map((h) => `ack ${h.ack}: ${show(h.change)}`),
          ...this.cutShort.filter((c) => covers(c, abs)).map((c) => `cut short: ${show(c)}`),
        ],
      };
    }
    return undefined;
  }

  /** After a check passed: what was read becomes the known value. */
  adopt(got: Buffer): void {
    if (got.length !== this.sizeBytes) throw new Error(`adopting ${got.length} bytes of ${this.sizeBytes}`);
    got.copy(this.expected);
    this.unknown.fill(0);
    this.cutShort = [];
  }

  /** Distinct acknowledged changes still visible with an ack above `since` (what a check verified). */
  visibleChanges(since: number): { all: number; unflushed: number } {
    const seen = new Set<number>();
    for (const a of this.ackOf) if (a > since) seen.add(a);
    let unflushed = 0;
    for (const a of seen) if (a > this.flushedAck) unflushed++;
    return { all: seen.size, unflushed };
  }
}

const covers = (c: Change, abs: number) => abs >= c.offset && abs < c.offset + c.length;
const show = (c: Change) =>
  `${c.data ? `write tag ${c.data.readUInt32LE(0)}` : ((c as { kind?: string }).kind ?? 'zero')} [${c.offset}, +${c.length})`;

function matches(c: Change, abs: number, got: Buffer): boolean {
  if (!c.data) return got.every((x) => x === 0);
  const at = abs - c.offset;
  return got.equals(c.data.subarray(at, at + SECTOR));
}
