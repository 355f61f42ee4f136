// The frame codec both ends of the wire share: handshake and option frames, request headers,
// reply headers, 64-bit fields. The server, the client (nbd/client) and the tests' raw client
// build and read frames only through here, so a layout is written down once.
import * as P from './protocol';

const TWO_POW_32 = 0x100000000;
/** High halves at or above this make a u64 larger than 2^53. */
const UNSAFE_HI = 0x200000;

/** Offsets of the fields in a request header (compact and extended alike, but for the length). */
export const REQUEST_FLAGS_AT = 4;
export const REQUEST_TYPE_AT = 6;
export const REQUEST_COOKIE_AT = 8;
export const REQUEST_OFFSET_AT = 16;
export const REQUEST_LENGTH_AT = 24;

/** A u64 from its two halves; Number.MAX_SAFE_INTEGER when beyond 2^53 (out of any range). */
export function u64(hi: number, lo: number): number {
  return hi >= UNSAFE_HI ? Number.MAX_SAFE_INTEGER : hi * TWO_POW_32 + lo;
}

/** A big-endian u64 at `at`, clamped as `u64` does. */
export function readU64(buffer: Buffer, at: number): number {
  return u64(buffer.readUInt32BE(at), buffer.readUInt32BE(at + 4));
}

/** A big-endian u64 the peer must keep below 2^53 (sizes, offsets we asked for); `what` names it. */
export function readSafeU64(buffer: Buffer, at: number, what: string): number {
  const hi = buffer.readUInt32BE(at);
  if (hi >= UNSAFE_HI) throw new RangeError(`${what} from the peer is beyond 2^53`);
  return hi * TWO_POW_32 + buffer.readUInt32BE(at + 4);
}

/** Writes a non-negative safe integer as a big-endian u64. */
export function writeU64(buffer: Buffer, value: number, at: number): void {
  buffer.writeUInt32BE(Math.floor(value / TWO_POW_32), at);
  buffer.writeUInt32BE(value >>> 0, at + 4);
}

// ---- Handshake ----

export function encodeGreeting(handshakeFlags: number): Buffer {
  const frame = Buffer.alloc(P.SERVER_GREETING_BYTES);
  frame.writeUInt32BE(P.NBDMAGIC_HI, 0);
  frame.writeUInt32BE(P.NBDMAGIC_LO, 4);
  frame.writeUInt32BE(P.IHAVEOPT_HI, 8);
  frame.writeUInt32BE(P.IHAVEOPT_LO, 12);
  frame.writeUInt16BE(handshakeFlags, 16);
  return frame;
}

/** The newstyle greeting's flags; throws, saying what is wrong, when it is not one. */
export function decodeGreeting(frame: Buffer): { handshakeFlags: number } {
  if (frame.readUInt32BE(0) !== P.NBDMAGIC_HI || frame.readUInt32BE(4) !== P.NBDMAGIC_LO)
    throw new Error('not an NBD server (bad greeting magic)');
  if (frame.readUInt32BE(8) !== P.IHAVEOPT_HI || frame.readUInt32BE(12) !== P.IHAVEOPT_LO)
    throw new Error('the NBD server does not speak the newstyle handshake');
  return { handshakeFlags: frame.readUInt16BE(16) };
}

export function encodeU32(value: number): Buffer {
  const frame = Buffer.allocUnsafe(4);
  frame.writeUInt32BE(value >>> 0, 0);
  return frame;
}

/** An option frame; `declaredLength` may lie about the data (for hostile tests). */
export function encodeOption(option: number, data: Buffer, declaredLength = data.length): Buffer {
  const frame = Buffer.allocUnsafe(P.OPTION_HEADER_BYTES + data.length);
  frame.writeUInt32BE(P.IHAVEOPT_HI, 0);
  frame.writeUInt32BE(P.IHAVEOPT_LO, 4);
  frame.writeUInt32BE(option >>> 0, 8);
  frame.writeUInt32BE(declaredLength >>> 0, 12);
  data.copy(frame, P.OPTION_HEADER_BYTES);
  return frame;
}

/** An option header's code and data length, or undefined when its magic is wrong. */
export function decodeOptionHeader(frame: Buffer): { option: number; length: number } | undefined {
  if (frame.readUInt32BE(0) !== P.IHAVEOPT_HI || frame.readUInt32BE(4) !== P.IHAVEOPT_LO) return undefined;
  return { option: frame.readUInt32BE(8), length: frame.readUInt32BE(12) };
}

export function encodeOptionReply(option: number, type: number, payload?: Buffer): Buffer {
  const length = payload?.length ?? 0;
  const frame = Buffer.allocUnsafe(P.OPTION_REPLY_HEADER_BYTES + length);
  frame.writeUInt32BE(P.OPTION_REPLY_MAGIC_HI, 0);
  frame.writeUInt32BE(P.OPTION_REPLY_MAGIC_LO, 4);
  frame.writeUInt32BE(option, 8);
  frame.writeUInt32BE(type, 12);
  frame.writeUInt32BE(length, 16);
  payload?.copy(frame, P.OPTION_REPLY_HEADER_BYTES);
  return frame;
}

export interface OptionReplyHeader {
  option: number;
  type: number;
  /** Bytes of reply data that follow the header. */
  length: number;
}

/** An option reply header; throws when its magic is wrong. */
export function decodeOptionReplyHeader(frame: Buffer): OptionReplyHeader {
  if (frame.readUInt32BE(0) !== P.OPTION_REPLY_MAGIC_HI || frame.readUInt32BE(4) !== P.OPTION_REPLY_MAGIC_LO)
    throw new Error('bad option reply magic');
  return { option: frame.readUInt32BE(8), type: frame.readUInt32BE(12), length: frame.readUInt32BE(16) };
}

/** A u32 length and the UTF-8 bytes of `text`, as option data carries names and queries. */
function lengthPrefixed(text: string): Buffer[] {
  const bytes = Buffer.from(text, 'utf8');
  return [encodeU32(bytes.length), bytes];
}

/** INFO/GO data: the export name and the NBD_INFO types asked for. */
export function encodeInfoRequest(exportName: string, infos: readonly number[] = []): Buffer {
  const count = Buffer.allocUnsafe(2 + 2 * infos.length);
  count.writeUInt16BE(infos.length, 0);
  infos.forEach((info, i) => count.writeUInt16BE(info, 2 + 2 * i));
  return Buffer.concat([...lengthPrefixed(exportName), count]);
}

/** LIST/SET_META_CONTEXT data: the export name and the context queries. */
export function encodeMetaContextRequest(exportName: string, queries: readonly string[]): Buffer {
  return Buffer.concat([
    ...lengthPrefixed(exportName),
    encodeU32(queries.length),
    ...queries.flatMap(lengthPrefixed),
  ]);
}

/** NBD_REP_META_CONTEXT data: the id the server gave a context, and its name. */
export function encodeMetaContextReply(id: number, name: string): Buffer {
  return Buffer.concat([encodeU32(id), Buffer.from(name, 'utf8')]);
}

export function decodeMetaContextReply(data: Buffer): { id: number; name: string } {
  if (data.length < 4) throw new Error('META_CONTEXT reply too short');
  return { id: data.readUInt32BE(0), name: data.toString('utf8', 4) };
}

/** NBD_REP_SERVER data (a LIST answer): the export name, then its description. */
export function encodeServerReply(exportName: string, description: string): Buffer {
  return Buffer.concat([...lengthPrefixed(exportName), Buffer.from(description, 'utf8')]);
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION data: the type, then the text (no length). */
export function encodeInfoString(type: number, text: string): Buffer {
  const head = Buffer.allocUnsafe(2);
  head.writeUInt16BE(type, 0);
  return Buffer.concat([head, Buffer.from(text, 'utf8')]);
}

/** NBD_INFO_EXPORT data: its type, then what the EXPORT_NAME reply starts with (size, flags). */
export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const data = Buffer.allocUnsafe(12);
  data.writeUInt16BE(P.NBD_INFO_EXPORT, 0);
  writeU64(data, sizeBytes, 2);
  data.writeUInt16BE(transmissionFlags, 10);
  return data;
}

/** The reply to EXPORT_NAME: size and flags, then 124 zeroes unless NO_ZEROES was agreed. */
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, zeroes: boolean): Buffer {
  const frame = Buffer.alloc(P.EXPORT_NAME_REPLY_BYTES + (zeroes ? P.EXPORT_NAME_ZEROES_BYTES : 0));
  writeU64(frame, sizeBytes, 0);
  frame.writeUInt16BE(transmissionFlags, 8);
  return frame;
}

export interface ExportFacts {
  sizeBytes: number;
  transmissionFlags: number;
}

export function decodeExportNameReply(frame: Buffer): ExportFacts {
  return { sizeBytes: readSafeU64(frame, 0, 'export size'), transmissionFlags: frame.readUInt16BE(8) };
}

export function encodeInfoBlockSize(
  minBytes: number,
  preferredBytes: number,
  maxPayloadBytes: number,
): Buffer {
  const data = Buffer.allocUnsafe(14);
  data.writeUInt16BE(P.NBD_INFO_BLOCK_SIZE, 0);
  data.writeUInt32BE(minBytes, 2);
  data.writeUInt32BE(preferredBytes, 6);
  data.writeUInt32BE(maxPayloadBytes, 10);
  return data;
}

export interface BlockSizeFacts {
  minBlockBytes: number;
  preferredBlockBytes: number;
  maxPayloadBytes: number;
}

/** NBD_REP_INFO data, by its NBD_INFO type; undefined for a type we do not read. */
export function decodeInfo(
  data: Buffer,
): ({ kind: 'export' } & ExportFacts) | ({ kind: 'block-size' } & BlockSizeFacts) | undefined {
  if (data.length < 2) throw new Error('NBD_REP_INFO too short');
  const type = data.readUInt16BE(0);
  if (type === P.NBD_INFO_EXPORT) {
    if (data.length < 12) throw new Error('NBD_INFO_EXPORT too short');
    return { kind: 'export', ...decodeExportNameReply(data.subarray(2)) };
  }
  if (type === P.NBD_INFO_BLOCK_SIZE) {
    if (data.length < 14) throw new Error('NBD_INFO_BLOCK_SIZE too short');
    return {
      kind: 'block-size',
      minBlockBytes: data.readUInt32BE(2),
      preferredBlockBytes: data.readUInt32BE(6),
      maxPayloadBytes: data.readUInt32BE(10),
    };
  }
  return undefined;
}

// ---- Transmission ----

export function requestBytes(extended: boolean): number {
  return extended ? P.EXTENDED_REQUEST_BYTES : P.COMPACT_REQUEST_BYTES;
}

/** A request header (a payload, if any, is sent after it as its own buffer: no copy). */
export function encodeRequest(
  extended: boolean,
  flags: number,
  type: number,
  cookie: number,
  offset: number,
  length: number,
): Buffer {
  const frame = Buffer.allocUnsafe(requestBytes(extended));
  frame.writeUInt32BE(extended ? P.NBD_EXTENDED_REQUEST_MAGIC : P.NBD_REQUEST_MAGIC, 0);
  frame.writeUInt16BE(flags, REQUEST_FLAGS_AT);
  frame.writeUInt16BE(type, REQUEST_TYPE_AT);
  writeU64(frame, cookie, REQUEST_COOKIE_AT);
  writeU64(frame, offset, REQUEST_OFFSET_AT);
  if (extended) writeU64(frame, length, REQUEST_LENGTH_AT);
  else frame.writeUInt32BE(length, REQUEST_LENGTH_AT);
  return frame;
}

/** The fields of a request header as the server keeps them (cookie and offset halves echo back). */
export interface RequestHeader {
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  offsetHi: number;
  offsetLo: number;
  /** Offset and length as numbers; Number.MAX_SAFE_INTEGER when beyond 2^53. */
  offset: number;
  length: number;
}

/**
 * Reads the request header at `frame[at…]` into `into` (the caller checked the magic). Filling
 * the caller's object keeps one allocation per request, whatever its shape.
 */
export function decodeRequest(frame: Buffer, at: number, extended: boolean, into: RequestHeader): void {
  into.flags = frame.readUInt16BE(at + REQUEST_FLAGS_AT);
  into.type = frame.readUInt16BE(at + REQUEST_TYPE_AT);
  into.cookieHi = frame.readUInt32BE(at + REQUEST_COOKIE_AT);
  into.cookieLo = frame.readUInt32BE(at + REQUEST_COOKIE_AT + 4);
  into.offsetHi = frame.readUInt32BE(at + REQUEST_OFFSET_AT);
  into.offsetLo = frame.readUInt32BE(at + REQUEST_OFFSET_AT + 4);
  into.offset = u64(into.offsetHi, into.offsetLo);
  into.length = extended
    ? readU64(frame, at + REQUEST_LENGTH_AT)
    : frame.readUInt32BE(at + REQUEST_LENGTH_AT);
}

/** A reply header of any of the three kinds, as a client reads it. */
export interface ReplyHeader {
  kind: 'simple' | 'structured' | 'extended';
  /** Simple replies: the error value (0 = success). */
  error: number;
  /** Chunks: reply flags, chunk type, payload length; 0 for simple replies. */
  flags: number;
  type: number;
  length: number;
  cookie: number;
  /** Extended chunks: the request offset echoed back; 0 otherwise. */
  offset: number;
}

/** Header bytes of the reply starting with `magic`, or undefined when it is no reply magic. */
export function replyHeaderBytes(magic: number): number | undefined {
  if (magic === P.NBD_SIMPLE_REPLY_MAGIC) return P.SIMPLE_REPLY_BYTES;
  if (magic === P.NBD_STRUCTURED_REPLY_MAGIC) return P.STRUCTURED_REPLY_BYTES;
  if (magic === P.NBD_EXTENDED_REPLY_MAGIC) return P.EXTENDED_REPLY_BYTES;
  return undefined;
}

/** Reads the reply header at `frame[at…]` into `into` (`replyHeaderBytes` accepted its magic). */
export function decodeReplyHeader(frame: Buffer, at: number, into: ReplyHeader): void {
  const magic = frame.readUInt32BE(at);
  if (magic === P.NBD_SIMPLE_REPLY_MAGIC) {
    into.kind = 'simple';
    into.error = frame.readUInt32BE(at + 4);
    into.flags = 0;
    into.type = 0;
    into.cookie = readU64(frame, at + 8);
    into.length = 0;
    into.offset = 0;
    return;
  }
  const extended = magic === P.NBD_EXTENDED_REPLY_MAGIC;
  into.kind = extended ? 'extended' : 'structured';
  into.error = 0;
  into.flags = frame.readUInt16BE(at + 4);
  into.type = frame.readUInt16BE(at + 6);
  into.cookie = readU64(frame, at + 8);
  into.offset = extended ? readU64(frame, at + 16) : 0;
  into.length = extended ? readU64(frame, at + 24) : frame.readUInt32BE(at + 16);
}

export function newReplyHeader(): ReplyHeader {
  return { kind: 'simple', error: 0, flags: 0, type: 0, length: 0, cookie: 0, offset: 0 };
}

/** Whether a chunk type is an error chunk (bit 15 set). */
export function isErrorChunk(type: number): boolean {
  return (type & 0x8000) !== 0;
}

/** An error chunk's payload: the error value and the server's message. */
export function decodeErrorChunk(payload: Buffer): { error: number; message: string } {
  const error = payload.length >= 4 ? payload.readUInt32BE(0) : P.NBD_EIO;
  const messageBytes = payload.length >= 6 ? payload.readUInt16BE(4) : 0;
  return { error, message: payload.toString('utf8', 6, 6 + messageBytes) };
}

/** A BLOCK_STATUS (or _EXT) chunk's payload: its context id and (length, flags) extents. */
export function decodeBlockStatus(
  type: number,
  payload: Buffer,
): { contextId: number; extents: Array<{ length: number; flags: number }> } {
  const contextId = payload.readUInt32BE(0);
  const extents: Array<{ length: number; flags: number }> = [];
  if (type === P.NBD_REPLY_TYPE_BLOCK_STATUS_EXT) {
    const count = payload.readUInt32BE(4);
    for (let i = 0, at = 8; i < count && at + 16 <= payload.length; i++, at += 16)
      extents.push({ length: readU64(payload, at), flags: readU64(payload, at + 8) });
  } else {
    for (let at = 4; at + 8 <= payload.length; at += 8)
      extents.push({ length: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) });
  }
  return { contextId, extents };
}
