// The device's optional fast paths, and READ data: into recycled buffers when the device can
// fill them, and for sparse reads split into data and zero pieces so holes go out without data.
import type { BlockDevice } from '../block-device';
import type { BufferPool } from './buffer-pool';
import { NbdCommandError } from './errors';
import { NBD_EIO } from './protocol';

/** A device with the optional `readInto` fast path (READ data in recycled buffers). */
export type ReadIntoDevice = Required<Pick<BlockDevice, 'readInto'>>;

function canReadInto(device: object): device is ReadIntoDevice {
  return typeof (device as Partial<ReadIntoDevice>).readInto === 'function';
}

/** A device with the optional `writeVectored` fast path (WRITE payloads left in socket chunks). */
export type WriteVectoredDevice = Required<Pick<BlockDevice, 'writeVectored'>>;

export function canWriteVectored(device: object): device is WriteVectoredDevice {
  return typeof (device as Partial<WriteVectoredDevice>).writeVectored === 'function';
}

/** Writes a WRITE payload: its received-chunk views when it kept them (vectored), else one buffer. */
export function writePayload(
  device: BlockDevice,
  offset: number,
  payload: Buffer | undefined,
  parts: Buffer[] | undefined,
  fua: boolean,
): Promise<void> {
  if (parts) return (device as BlockDevice & WriteVectoredDevice).writeVectored(offset, parts, { fua });
  return device.write(offset, payload as Buffer, fua ? { fua } : undefined);
}

/** Data read for a reply; `pooled` data goes back to the pool once sent. */
export interface ReadData {
  data: Buffer;
  pooled: boolean;
}

/** A stretch of a sparse READ: its data, or undefined where it reads as zeros. */
export interface ReadPiece {
  offset: number;
  length: number;
  read: ReadData | undefined;
}

export async function readData(
  device: BlockDevice,
  pool: BufferPool,
  offset: number,
  length: number,
): Promise<ReadData> {
  if (canReadInto(device)) {
    const data = pool.acquire(length);
    try {
      await device.readInto(offset, data);
    } catch (error) {
      pool.release(data);
      throw error;
    }
    return { data, pooled: true };
  }
  const data = await device.read(offset, length);
  if (data.length !== length) {
    throw new NbdCommandError(NBD_EIO, `device returned ${data.length} bytes, expected ${length}`);
  }
  return { data, pooled: false };
}

/**
 * The range as pieces in order, zero ones (holes, known zeros) without data. Where block status
 * stops short, the rest is read as data. On a failed read nothing is left acquired.
 */
export async function readSparse(
  device: BlockDevice,
  pool: BufferPool,
  offset: number,
  length: number,
): Promise<ReadPiece[]> {
  const end = offset + length;
  const pieces: Array<{ offset: number; length: number; zero: boolean }> = [];
  let cursor = offset;
  for (const extent of await device.blockStatus(offset, length)) {
    if (extent.offset > cursor || extent.offset + extent.length <= cursor) break;
    const pieceEnd = Math.min(extent.offset + extent.length, end);
    pushPiece(pieces, cursor, pieceEnd - cursor, extent.zero || extent.hole);
    cursor = pieceEnd;
    if (cursor >= end) break;
  }
  if (cursor < end) pushPiece(pieces, cursor, end - cursor, false);

  const reads = await Promise.allSettled(
    pieces.map((p) => (p.zero ? undefined : readData(device, pool, p.offset, p.length))),
  );
  const failure = reads.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure) {
    for (const r of reads) if (r.status === 'fulfilled' && r.value?.pooled) pool.release(r.value.data);
    throw failure.reason;
  }
  return pieces.map((p, i) => ({
    offset: p.offset,
    length: p.length,
    read: (reads[i] as PromiseFulfilledResult<ReadData | undefined>).value,
  }));
}

function pushPiece(
  pieces: Array<{ offset: number; length: number; zero: boolean }>,
  offset: number,
  length: number,
  zero: boolean,
): void {
  const last = pieces[pieces.length - 1];
  if (last && last.zero === zero) last.length += length;
  else pieces.push({ offset, length, zero });
}
