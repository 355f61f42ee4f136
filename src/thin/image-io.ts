import fsp from 'node:fs/promises';
import { ThinDevice } from './thin-device';

const CHUNK_BYTES = 1024 * 1024;

function isZero(buf: Buffer): boolean {
  // Compare 8 bytes at a time; a chunk of a sparse image is usually all zero or clearly not.
  const words = Math.floor(buf.length / 8);
  for (let i = 0; i < words; i++) if (buf.readBigUInt64LE(i * 8) !== 0n) return false;
  for (let i = words * 8; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

export interface CopyStats {
  bytesCopied: number;
  bytesSkipped: number;
}

/** Copies an image file into a device; runs of zeros are not written, so they stay holes. */
export async function importImage(file: string, device: ThinDevice, blockBytes: number): Promise<CopyStats> {
  const fh = await fsp.open(file, 'r');
  const stats: CopyStats = { bytesCopied: 0, bytesSkipped: 0 };
  try {
    const size = (await fh.stat()).size;
    const chunk = Math.max(blockBytes, CHUNK_BYTES - (CHUNK_BYTES % blockBytes));
    const buf = Buffer.alloc(chunk);
    for (let pos = 0; pos < size; pos += chunk) {
      const want = Math.min(chunk, size - pos);
      const { bytesRead } = await fh.read(buf, 0, want, pos);
      // The tail of a file that is not a multiple of 512 is padded with zeros.
      const padded = Math.ceil(bytesRead / 512) * 512;
      buf.fill(0, bytesRead, padded);
      for (let off = 0; off < padded; off += blockBytes) {
        const piece = buf.subarray(off, Math.min(off + blockBytes, padded));
        if (isZero(piece)) stats.bytesSkipped += piece.length;
        else {
          await device.write(pos + off, Buffer.from(piece));
          stats.bytesCopied += piece.length;
        }
      }
    }
  } finally {
    await fh.close();
  }
  await device.flush();
  return stats;
}

/** Writes a device to a sparse image file: unmapped ranges and zero blocks become holes. */
export async function exportImage(device: ThinDevice, file: string): Promise<CopyStats> {
  const fh = await fsp.open(file, 'w');
  const stats: CopyStats = { bytesCopied: 0, bytesSkipped: 0 };
  try {
    await fh.truncate(device.sizeBytes);
    for (let pos = 0; pos < device.sizeBytes; pos += CHUNK_BYTES) {
      const length = Math.min(CHUNK_BYTES, device.sizeBytes - pos);
      for (const extent of await device.blockStatus(pos, length)) {
        if (extent.hole) {
          stats.bytesSkipped += extent.length;
          continue;
        }
        const data = await device.read(extent.offset, extent.length);
        if (isZero(data)) stats.bytesSkipped += data.length;
        else {
          await fh.write(data, 0, data.length, extent.offset);
          stats.bytesCopied += data.length;
        }
      }
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  return stats;
}
