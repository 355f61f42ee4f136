import { crc32cRaw } from './crc32c';
import { BlockCorruptError } from './errors';

export const METADATA_BLOCK_SIZE = 4096;

/**
 * Seals and checks one kind of metadata block. Every kind keeps a salted CRC-32C of bytes
 * 4..4095 at offset 0; most also keep their own block number, so a misdirected write is caught.
 */
export interface BlockValidator {
  readonly name: string;
  prepareForWrite(block: Buffer, location: number): void;
  check(block: Buffer, location: number): void;
}

export function blockChecksum(block: Buffer, salt: number): number {
  return (crc32cRaw(block.subarray(4, METADATA_BLOCK_SIZE)) ^ salt) >>> 0;
}

/** A validator for block types with `le32 csum` at 0 and, optionally, `le64 blocknr` at `blocknrOffset`. */
export function saltedValidator(
  name: string,
  salt: number,
  blocknrOffset: number | null = 8,
): BlockValidator {
  return {
    name,
    prepareForWrite(block, location) {
      if (blocknrOffset !== null) writeU64(block, blocknrOffset, location);
      block.writeUInt32LE(blockChecksum(block, salt), 0);
    },
    check(block, location) {
      if (blocknrOffset !== null) checkLocation(name, block, blocknrOffset, location);
      const want = blockChecksum(block, salt);
      const got = block.readUInt32LE(0);
      if (got !== want) {
        throw new BlockCorruptError(
          name,
          location,
          `bad checksum (stored ${hex(got)}, computed ${hex(want)})`,
        );
      }
    },
  };
}

/** The block's own stored location must match where it was read from (garbage may exceed 2^53). */
export function checkLocation(name: string, block: Buffer, offset: number, location: number): void {
  const stored = block.readBigUInt64LE(offset);
  if (stored !== BigInt(location)) throw new BlockCorruptError(name, location, `bad block number ${stored}`);
}

function hex(n: number): string {
  return '0x' + n.toString(16).padStart(8, '0');
}

// On-disk integers are little-endian u64; everything we store fits in 2^53.
export function readU64(buf: Buffer, offset: number): number {
  const lo = buf.readUInt32LE(offset);
  const hi = buf.readUInt32LE(offset + 4);
  if (hi > 0x1fffff) throw new RangeError(`u64 at offset ${offset} exceeds 2^53`);
  return hi * 0x100000000 + lo;
}

export function writeU64(buf: Buffer, offset: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`not a u64: ${value}`);
  buf.writeUInt32LE(value % 0x100000000, offset);
  buf.writeUInt32LE(Math.floor(value / 0x100000000), offset + 4);
}
