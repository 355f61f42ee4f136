// Pack files: many chunks in one file, so a backup pays one fsync per pack rather than one per
// chunk. Layout (all integers big-endian):
//
//   header   16 bytes   "TPPK", u32 version 1, 8 zero bytes
//   records  one per chunk: 44-byte record header ("TPCK", u8 version 2, u8 codec, 2 zero bytes,
//            u32 payload length, 32-byte SHA-256 of the uncompressed bytes), then the payload
//   index    one 48-byte entry per record: SHA-256, u64 record offset, u32 payload length,
//            u32 uncompressed length
//   footer   32 bytes   "TPPI", u32 version 1, u64 index offset, u32 entry count,
//            the first 12 bytes of the SHA-256 of the index
//
// The index lets a reader find every chunk with two reads; the record headers repeat what it
// says, so a pack whose index is damaged can still be read by scanning its records.
import { createHash } from 'node:crypto';
import fsp from 'node:fs/promises';

export const PACK_MAGIC = 0x5450504b; // "TPPK"
export const RECORD_MAGIC = 0x5450434b; // "TPCK" (also the v1 chunk-file magic)
const FOOTER_MAGIC = 0x54505049; // "TPPI"
export const PACK_HEADER_BYTES = 16;
export const RECORD_HEADER_BYTES = 44;
const INDEX_ENTRY_BYTES = 48;
const FOOTER_BYTES = 32;
const TWO_32 = 2 ** 32;

/** Where a chunk's record sits in a pack. */
export interface PackEntry {
  hash: string;
  /** Offset of the record header in the pack file. */
  offset: number;
  /** Stored payload bytes (after compression) and the chunk's own length. */
  storedBytes: number;
  rawBytes: number;
}

export class PackFormatError extends Error {
  constructor(file: string, detail: string) {
    super(`pack ${file}: ${detail}`);
    this.name = 'PackFormatError';
  }
}

function writeU64(buf: Buffer, at: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_32 + buf.readUInt32BE(at + 4);
}

export function packHeader(): Buffer {
  const b = Buffer.alloc(PACK_HEADER_BYTES);
  b.writeUInt32BE(PACK_MAGIC, 0);
  b.writeUInt32BE(1, 4);
  return b;
}

export function recordHeader(hash: string, codecId: number, payloadBytes: number): Buffer {
  const b = Buffer.alloc(RECORD_HEADER_BYTES);
  b.writeUInt32BE(RECORD_MAGIC, 0);
  b.writeUInt8(2, 4);
  b.writeUInt8(codecId, 5);
  b.writeUInt32BE(payloadBytes, 8);
  b.write(hash, 12, 32, 'hex');
  return b;
}

export interface RecordHeader {
  codecId: number;
  payloadBytes: number;
  hash: string;
}

export function parseRecordHeader(b: Buffer): RecordHeader | undefined {
  if (b.length < RECORD_HEADER_BYTES || b.readUInt32BE(0) !== RECORD_MAGIC || b.readUInt8(4) !== 2)
    return undefined;
  return { codecId: b.readUInt8(5), payloadBytes: b.readUInt32BE(8), hash: b.toString('hex', 12, 44) };
}

/** The index and footer that close a pack whose records end at `indexOffset`. */
export function packTrailer(entries: PackEntry[], indexOffset: number): Buffer {
  const index = Buffer.alloc(entries.length * INDEX_ENTRY_BYTES);
  entries.forEach((e, i) => {
    const at = i * INDEX_ENTRY_BYTES;
    index.write(e.hash, at, 32, 'hex');
    writeU64(index, at + 32, e.offset);
    index.writeUInt32BE(e.storedBytes, at + 40);
    index.writeUInt32BE(e.rawBytes, at + 44);
  });
  const footer = Buffer.alloc(FOOTER_BYTES);
  footer.writeUInt32BE(FOOTER_MAGIC, 0);
  footer.writeUInt32BE(1, 4);
  writeU64(footer, 8, indexOffset);
  footer.writeUInt32BE(entries.length, 16);
  createHash('sha256').update(index).digest().copy(footer, 20, 0, 12);
  return Buffer.concat([index, footer]);
}

async function readAt(handle: fsp.FileHandle, offset: number, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length);
  const { bytesRead } = await handle.read(out, 0, length, offset);
  return out.subarray(0, bytesRead);
}

/** The entries of a pack, from its index; a damaged index falls back to a scan of the records. */
export async function readPackIndex(file: string): Promise<PackEntry[]> {
  const handle = await fsp.open(file, 'r');
  try {
    const size = (await handle.stat()).size;
    const header = await readAt(handle, 0, PACK_HEADER_BYTES);
    if (
      header.length < PACK_HEADER_BYTES ||
      header.readUInt32BE(0) !== PACK_MAGIC ||
      header.readUInt32BE(4) !== 1
    )
      throw new PackFormatError(file, 'not a version 1 pack (bad header)');
    const fromIndex = await indexFromFooter(handle, size);
    return fromIndex ?? (await scanRecords(handle, size));
  } finally {
    await handle.close();
  }
}

async function indexFromFooter(handle: fsp.FileHandle, size: number): Promise<PackEntry[] | undefined> {
  if (size < PACK_HEADER_BYTES + FOOTER_BYTES) return undefined;
  const footer = await readAt(handle, size - FOOTER_BYTES, FOOTER_BYTES);
  if (footer.readUInt32BE(0) !== FOOTER_MAGIC || footer.readUInt32BE(4) !== 1) return undefined;
  const indexOffset = readU64(footer, 8);
  const count = footer.readUInt32BE(16);
  if (indexOffset + count * INDEX_ENTRY_BYTES + FOOTER_BYTES !== size) return undefined;
  const index = await readAt(handle, indexOffset, count * INDEX_ENTRY_BYTES);
  const check = createHash('sha256').update(index).digest().subarray(0, 12);
  if (!check.equals(footer.subarray(20, 32))) return undefined;
  const out: PackEntry[] = [];
  for (let at = 0; at < index.length; at += INDEX_ENTRY_BYTES)
    out.push({
      hash: index.toString('hex', at, at + 32),
      offset: readU64(index, at + 32),
      storedBytes: index.readUInt32BE(at + 40),
      rawBytes: index.readUInt32BE(at + 44),
    });
  return out;
}

/** Walks the records from the header on; stops at the first thing that is not a record. */
async function scanRecords(handle: fsp.FileHandle, size: number): Promise<PackEntry[]> {
  const out: PackEntry[] = [];
  for (let at = PACK_HEADER_BYTES; at + RECORD_HEADER_BYTES <= size;) {
    const head = parseRecordHeader(await readAt(handle, at, RECORD_HEADER_BYTES));
    if (!head || at + RECORD_HEADER_BYTES + head.payloadBytes > size) break;
    // The uncompressed length is unknown without decoding; 0 says "ask the record".
    out.push({ hash: head.hash, offset: at, storedBytes: head.payloadBytes, rawBytes: 0 });
    at += RECORD_HEADER_BYTES + head.payloadBytes;
  }
  return out;
}
