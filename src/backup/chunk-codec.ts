// How a chunk's bytes are named (SHA-256 of the raw bytes) and compressed. The codec id is what
// record headers and version 1 chunk files store.
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import zlib from 'node:zlib';

export type Codec = 'none' | 'deflate' | 'brotli';
export const CODEC_IDS: Record<Codec, number> = { none: 0, deflate: 1, brotli: 2 };
const CODEC_NAMES: Codec[] = ['none', 'deflate', 'brotli'];

const deflate = promisify(zlib.deflateRaw);
const inflate = promisify(zlib.inflateRaw);
const brotli = promisify(zlib.brotliCompress);
const unbrotli = promisify(zlib.brotliDecompress);

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Compresses a chunk with `codec` (level/quality 1); data that does not shrink stays raw. */
export async function encodeChunk(data: Buffer, codec: Codec): Promise<{ payload: Buffer; codec: Codec }> {
  let payload = data;
  if (codec === 'deflate') payload = await deflate(data, { level: 1 });
  else if (codec === 'brotli')
    payload = await brotli(data, { params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 1 } });
  return payload.length < data.length ? { payload, codec } : { payload: data, codec: 'none' };
}

export async function decodeChunk(payload: Buffer, codecId: number): Promise<Buffer> {
  const codec = CODEC_NAMES[codecId];
  if (codec === 'none') return payload;
  if (codec === 'deflate') return inflate(payload);
  if (codec === 'brotli') return unbrotli(payload);
  throw new Error(`unknown codec ${codecId}`);
}
