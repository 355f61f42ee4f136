// Reading one stored chunk back: a record in a pack, or (version 1) a file of its own. Damage is
// reported as ChunkError naming the file and offset; checking the hash is the caller's job.
import fsp from 'node:fs/promises';
import { decodeChunk } from './chunk-codec';
import { type PackEntry, parseRecordHeader, RECORD_HEADER_BYTES, RECORD_MAGIC } from './pack';
import { ChunkError } from './repository-errors';

/** Where a chunk is stored: a record in a pack, or (version 1) a file of its own. */
export type ChunkLocation = { pack: string; entry: PackEntry } | { file: string };

/** Header of a version 1 chunk file: "TPCK", u8 version 1, u8 codec, 2 zero bytes. */
const CHUNK_HEADER_BYTES = 8;

/** The chunk's uncompressed bytes. */
export function readChunkAt(hash: string, at: ChunkLocation): Promise<Buffer> {
  return 'file' in at ? readChunkFile(hash, at.file) : readPackRecord(hash, at);
}

/** A record as stored (header and compressed payload), for copying it into another pack. */
export async function readRecordBytes(pack: string, entry: PackEntry): Promise<Buffer> {
  const handle = await fsp.open(pack, 'r');
  try {
    const out = Buffer.alloc(RECORD_HEADER_BYTES + entry.storedBytes);
    await handle.read(out, 0, out.length, entry.offset);
    return out;
  } finally {
    await handle.close();
  }
}

async function readPackRecord(hash: string, at: { pack: string; entry: PackEntry }): Promise<Buffer> {
  const length = RECORD_HEADER_BYTES + at.entry.storedBytes;
  const raw = Buffer.allocUnsafe(length);
  let got: number;
  try {
    const handle = await fsp.open(at.pack, 'r');
    try {
      got = (await handle.read(raw, 0, length, at.entry.offset)).bytesRead;
    } finally {
      await handle.close();
    }
  } catch (e) {
    throw new ChunkError(hash, at.pack, 'missing', (e as Error).message);
  }
  const where = `${at.pack} at ${at.entry.offset}`;
  const head = parseRecordHeader(raw.subarray(0, got));
  if (got < length || !head || head.hash !== hash || head.payloadBytes !== at.entry.storedBytes)
    throw new ChunkError(hash, at.pack, 'corrupt', `bad record header (${where})`);
  try {
    return await decodeChunk(raw.subarray(RECORD_HEADER_BYTES), head.codecId);
  } catch (e) {
    throw new ChunkError(hash, at.pack, 'corrupt', `${(e as Error).message} (${where})`);
  }
}

async function readChunkFile(hash: string, file: string): Promise<Buffer> {
  let raw: Buffer;
  try {
    raw = await fsp.readFile(file);
  } catch (e) {
    throw new ChunkError(hash, file, 'missing', (e as Error).message);
  }
  if (raw.length < CHUNK_HEADER_BYTES || raw.readUInt32BE(0) !== RECORD_MAGIC || raw.readUInt8(4) !== 1)
    throw new ChunkError(hash, file, 'corrupt', 'bad chunk header');
  try {
    return await decodeChunk(raw.subarray(CHUNK_HEADER_BYTES), raw.readUInt8(5));
  } catch (e) {
    throw new ChunkError(hash, file, 'corrupt', (e as Error).message);
  }
}
