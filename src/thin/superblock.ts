import { BlockValidator, checkLocation, readU64, saltedValidator, writeU64 } from '../pdata/block-validator';
import { BlockCorruptError } from '../pdata/errors';
import { SpaceMapRoot, decodeSpaceMapRoot, encodeSpaceMapRoot } from '../pdata/space-map/sm-root';

export const SUPERBLOCK_LOCATION = 0;
export const THIN_MAGIC = 27022010;
export const THIN_VERSION = 2;
export const METADATA_BLOCK_SECTORS = 8;
export const NEEDS_CHECK_FLAG = 1;
const SUPERBLOCK_SALT = 160774;

/** The thin superblock (364 bytes at the start of block 0). */
export interface Superblock {
  flags: number;
  /** Bumped by every snapshot; stored in the low 24 bits of each mapping. */
  time: number;
  /** Userspace's compare-and-swap token. */
  transactionId: number;
  /** Block of the held metadata-snapshot superblock, 0 when none. */
  heldRoot: number;
  dataSpaceMap: SpaceMapRoot;
  metadataSpaceMap: SpaceMapRoot;
  dataMappingRoot: number;
  deviceDetailsRoot: number;
  /** In 512-byte sectors. */
  dataBlockSectors: number;
  metadataNrBlocks: number;
}

const salted = saltedValidator('superblock', SUPERBLOCK_SALT);

/** The kernel's order: location, then magic, then checksum. */
export const superblockValidator: BlockValidator = {
  name: 'superblock',
  prepareForWrite: salted.prepareForWrite,
  check(block, location) {
    checkLocation('superblock', block, 8, location);
    const magic = block.readBigUInt64LE(0x20);
    if (magic !== BigInt(THIN_MAGIC)) {
      throw new BlockCorruptError('superblock', location, `bad magic ${magic} (not thin-pool metadata)`);
    }
    salted.check(block, location);
  },
};

export function decodeSuperblock(block: Buffer): Superblock {
  return {
    flags: block.readUInt32LE(0x04),
    time: block.readUInt32LE(0x2c),
    transactionId: readU64(block, 0x30),
    heldRoot: readU64(block, 0x38),
    dataSpaceMap: decodeSpaceMapRoot(block, 0x40),
    metadataSpaceMap: decodeSpaceMapRoot(block, 0xc0),
    dataMappingRoot: readU64(block, 0x140),
    deviceDetailsRoot: readU64(block, 0x148),
    dataBlockSectors: block.readUInt32LE(0x150),
    metadataNrBlocks: readU64(block, 0x158),
  };
}

/** A whole 4 KiB block: the tail stays zero because the checksum covers it. */
export function encodeSuperblock(sb: Superblock, block: Buffer = Buffer.alloc(4096)): Buffer {
  block.fill(0);
  block.writeUInt32LE(sb.flags, 0x04);
  writeU64(block, 0x20, THIN_MAGIC);
  block.writeUInt32LE(THIN_VERSION, 0x28);
  block.writeUInt32LE(sb.time, 0x2c);
  writeU64(block, 0x30, sb.transactionId);
  writeU64(block, 0x38, sb.heldRoot);
  encodeSpaceMapRoot(sb.dataSpaceMap, block, 0x40);
  encodeSpaceMapRoot(sb.metadataSpaceMap, block, 0xc0);
  writeU64(block, 0x140, sb.dataMappingRoot);
  writeU64(block, 0x148, sb.deviceDetailsRoot);
  block.writeUInt32LE(sb.dataBlockSectors, 0x150);
  block.writeUInt32LE(METADATA_BLOCK_SECTORS, 0x154);
  writeU64(block, 0x158, sb.metadataNrBlocks);
  return block;
}
