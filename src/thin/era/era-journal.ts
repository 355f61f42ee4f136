import crypto from 'node:crypto';
import fs from 'node:fs';
import { crc32c } from '../../pdata/crc32c';
import { currentBootId } from '../boot-id';

// Blocks marked since the last era commit, appended (written, never synced) before the data write
// that marks them is issued: a killed process leaves them in the page cache for the next open to
// replay. After a machine crash nothing could say which unflushed writes reached the disk, so
// the tracker marks every block then and syncing the journal would buy nothing. Replaying a mark
// whose write never happened only makes a block look written when it was not, which is safe;
// missing one is not.

const MAGIC = 0x4a415245; // "ERAJ"
const VERSION = 1;
const HEADER_BYTES = 64;
const RECORD_BYTES = 8;
/** A record that ends the current era (a checkpoint) rather than marking a block. */
export const ROLLOVER = 0xffffffff;

export interface EraJournalContents {
  /** Marked blocks in order, with ROLLOVER where a checkpoint started the next era. */
  blocks: number[];
  /** The boot that wrote the journal, when it could be read. */
  sameBoot: boolean;
}

export class EraJournal {
  private nonce = 0;
  private records = 0;

  private constructor(private readonly fd: number) {}

  static open(path: string): EraJournal {
    return new EraJournal(fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600));
  }

  /** The marks of the current generation, in the order written, up to the first torn record. */
  read(): EraJournalContents {
    const header = Buffer.alloc(HEADER_BYTES);
    const boot = currentBootId();
    if (fs.readSync(this.fd, header, 0, HEADER_BYTES, 0) < HEADER_BYTES)
      return { blocks: [], sameBoot: false };
    if (
      header.readUInt32LE(0) !== MAGIC ||
      header.readUInt32LE(4) !== VERSION ||
      header.readUInt32LE(60) !== crc32c(header.subarray(0, 60))
    )
      return { blocks: [], sameBoot: false };
    const sameBoot = boot !== undefined && header.subarray(8, 24).equals(boot);
    const nonce = header.readUInt32LE(24);
    const blocks: number[] = [];
    const chunk = Buffer.alloc(RECORD_BYTES * 4096);
    const check = Buffer.alloc(8);
    check.writeUInt32LE(nonce, 0);
    for (let pos = HEADER_BYTES; ;) {
      const n = fs.readSync(this.fd, chunk, 0, chunk.length, pos);
      for (let at = 0; at + RECORD_BYTES <= n; at += RECORD_BYTES) {
        const block = chunk.readUInt32LE(at);
        check.writeUInt32LE(block, 4);
        if (chunk.readUInt32LE(at + 4) !== crc32c(check)) return { blocks, sameBoot };
        blocks.push(block);
      }
      if (n < chunk.length) return { blocks, sameBoot };
      pos += n;
    }
  }

  /** Starts a new generation: marks of the old one are no longer replayed. */
  restart(): void {
    this.nonce = crypto.randomBytes(4).readUInt32LE(0);
    this.records = 0;
    const header = Buffer.alloc(HEADER_BYTES);
    header.writeUInt32LE(MAGIC, 0);
    header.writeUInt32LE(VERSION, 4);
    currentBootId()?.copy(header, 8);
    header.writeUInt32LE(this.nonce, 24);
    header.writeUInt32LE(crc32c(header.subarray(0, 60)), 60);
    fs.writeSync(this.fd, header, 0, HEADER_BYTES, 0);
  }

  /** Writes the marks now (one write), before the data they cover is. */
  append(blocks: readonly number[]): void {
    const buf = Buffer.allocUnsafe(blocks.length * RECORD_BYTES);
    const check = Buffer.alloc(8);
    check.writeUInt32LE(this.nonce, 0);
    blocks.forEach((block, i) => {
      check.writeUInt32LE(block, 4);
      buf.writeUInt32LE(block, i * RECORD_BYTES);
      buf.writeUInt32LE(crc32c(check), i * RECORD_BYTES + 4);
    });
    const pos = HEADER_BYTES + this.records * RECORD_BYTES;
    for (let at = 0; at < buf.length;) at += fs.writeSync(this.fd, buf, at, buf.length - at, pos + at);
    this.records += blocks.length;
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
