// Encoders for transmission replies: simple, structured (20-byte) and extended (32-byte) headers.
import * as P from './protocol';
import { writeU64 } from './wire';

/** The parts of a request every reply echoes. */
export interface ReplyTarget {
  cookieHi: number;
  cookieLo: number;
  /** Request offset as sent (two u32 halves), echoed in extended reply headers. */
  offsetHi: number;
  offsetLo: number;
}

export function simpleReply(target: ReplyTarget, error: number): Buffer {
  const frame = Buffer.allocUnsafe(P.SIMPLE_REPLY_BYTES);
  frame.writeUInt32BE(P.NBD_SIMPLE_REPLY_MAGIC, 0);
  frame.writeUInt32BE(error, 4);
  frame.writeUInt32BE(target.cookieHi, 8);
  frame.writeUInt32BE(target.cookieLo, 12);
  return frame;
}

/**
 * A chunk header followed by `extra` bytes of room for the fixed part of the payload
 * (e.g. the u64 offset of OFFSET_DATA), so header and fixed payload go out as one buffer.
 * Returns the buffer and where the extra room starts.
 */
export function chunkHeader(
  extended: boolean,
  target: ReplyTarget,
  flags: number,
  type: number,
  payloadBytes: number,
  extra: number,
): { frame: Buffer; at: number } {
  if (extended) {
    const frame = Buffer.allocUnsafe(P.EXTENDED_REPLY_BYTES + extra);
    frame.writeUInt32BE(P.NBD_EXTENDED_REPLY_MAGIC, 0);
    frame.writeUInt16BE(flags, 4);
    frame.writeUInt16BE(type, 6);
    frame.writeUInt32BE(target.cookieHi, 8);
    frame.writeUInt32BE(target.cookieLo, 12);
    frame.writeUInt32BE(target.offsetHi, 16);
    frame.writeUInt32BE(target.offsetLo, 20);
    writeU64(frame, payloadBytes, 24);
    return { frame, at: P.EXTENDED_REPLY_BYTES };
  }
  const frame = Buffer.allocUnsafe(P.STRUCTURED_REPLY_BYTES + extra);
  frame.writeUInt32BE(P.NBD_STRUCTURED_REPLY_MAGIC, 0);
  frame.writeUInt16BE(flags, 4);
  frame.writeUInt16BE(type, 6);
  frame.writeUInt32BE(target.cookieHi, 8);
  frame.writeUInt32BE(target.cookieLo, 12);
  frame.writeUInt32BE(payloadBytes, 16);
  return { frame, at: P.STRUCTURED_REPLY_BYTES };
}

/** OFFSET_DATA header + its u64 offset; the data itself is written separately (no copy). */
export function dataChunkHeader(
  extended: boolean,
  target: ReplyTarget,
  done: boolean,
  offset: number,
  dataBytes: number,
): Buffer {
  const flags = done ? P.NBD_REPLY_FLAG_DONE : 0;
  const prefix = P.OFFSET_DATA_PREFIX_BYTES;
  const { frame, at } = chunkHeader(
    extended,
    target,
    flags,
    P.NBD_REPLY_TYPE_OFFSET_DATA,
    prefix + dataBytes,
    prefix,
  );
  writeU64(frame, offset, at);
  return frame;
}

export function holeChunk(
  extended: boolean,
  target: ReplyTarget,
  done: boolean,
  offset: number,
  bytes: number,
): Buffer {
  const flags = done ? P.NBD_REPLY_FLAG_DONE : 0;
  const size = P.OFFSET_HOLE_BYTES;
  const { frame, at } = chunkHeader(extended, target, flags, P.NBD_REPLY_TYPE_OFFSET_HOLE, size, size);
  writeU64(frame, offset, at);
  frame.writeUInt32BE(bytes, at + 8);
  return frame;
}

export function doneChunk(extended: boolean, target: ReplyTarget): Buffer {
  return chunkHeader(extended, target, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_NONE, 0, 0).frame;
}

export function errorChunk(extended: boolean, target: ReplyTarget, error: number, message: string): Buffer {
  const text = Buffer.from(message.slice(0, 200), 'utf8');
  const { frame, at } = chunkHeader(
    extended,
    target,
    P.NBD_REPLY_FLAG_DONE,
    P.NBD_REPLY_TYPE_ERROR,
    6 + text.length,
    6 + text.length,
  );
  frame.writeUInt32BE(error, at);
  frame.writeUInt16BE(text.length, at + 4);
  text.copy(frame, at + 6);
  return frame;
}

/** One BLOCK_STATUS (or BLOCK_STATUS_EXT) chunk for one context. */
export function blockStatusChunk(
  extended: boolean,
  target: ReplyTarget,
  done: boolean,
  contextId: number,
  extents: ReadonlyArray<{ length: number; flags: number }>,
): Buffer {
  const flags = done ? P.NBD_REPLY_FLAG_DONE : 0;
  if (extended) {
    const bytes = 8 + 16 * extents.length;
    const { frame, at } = chunkHeader(true, target, flags, P.NBD_REPLY_TYPE_BLOCK_STATUS_EXT, bytes, bytes);
    frame.writeUInt32BE(contextId, at);
    frame.writeUInt32BE(extents.length, at + 4);
    let position = at + 8;
    for (const extent of extents) {
      writeU64(frame, extent.length, position);
      frame.writeUInt32BE(0, position + 8);
      frame.writeUInt32BE(extent.flags, position + 12);
      position += 16;
    }
    return frame;
  }
  const bytes = 4 + 8 * extents.length;
  const { frame, at } = chunkHeader(false, target, flags, P.NBD_REPLY_TYPE_BLOCK_STATUS, bytes, bytes);
  frame.writeUInt32BE(contextId, at);
  let position = at + 4;
  for (const extent of extents) {
    frame.writeUInt32BE(extent.length, position);
    frame.writeUInt32BE(extent.flags, position + 4);
    position += 8;
  }
  return frame;
}
