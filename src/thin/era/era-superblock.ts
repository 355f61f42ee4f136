import {
  BlockValidator,
  METADATA_BLOCK_SIZE,
  checkLocation,
  readU64,
  saltedValidator,
  writeU64,
} from '../../pdata/block-validator';
import { BlockCorruptError } from '../../pdata/errors';
import { SpaceMapRoot, decodeSpaceMapRoot, encodeSpaceMapRoot } from '../../pdata/space-map/sm-root';

// The dm-era superblock (block 0 of the era metadata), little-endian, in the kernel's layout.
export const ERA_MAGIC = 2126579579;
export const ERA_VERSION = 1;
const ERA_SALT = 146538381;
const CLEAN_SHUTDOWN = 1;

export interface Writeset {
  nrBits: number;
  /** Root of the writeset's bitset; 0 when there is none. */
  root: number;
}

export interface EraSuperblock {
  cleanShutdown: boolean;
  metadataSpaceMap: SpaceMapRoot;
  /** In 512-byte sectors. */
  dataBlockSectors: number;
  nrBlocks: number;
  currentEra: number;
  currentWriteset: Writeset;
  writesetTreeRoot: number;
  eraArrayRoot: number;
  /** Block of the held metadata-snapshot superblock, 0 when none. */
  metadataSnap: number;
}

const salted = saltedValidator('era superblock', ERA_SALT);

export const eraSuperblockValidator: BlockValidator = {
  name: 'era superblock',
  prepareForWrite: salted.prepareForWrite,
  check(block, location) {
    checkLocation('era superblock', block, 8, location);
    const magic = block.readBigUInt64LE(32);
    if (magic !== BigInt(ERA_MAGIC))
      throw new BlockCorruptError('era superblock', location, `bad magic ${magic} (not dm-era metadata)`);
    salted.check(block, location);
    const version = block.readUInt32LE(40);
    if (version !== ERA_VERSION)
      throw new BlockCorruptError('era superblock', location, `version ${version} is not supported`);
  },
};

export function encodeEraSuperblock(
  sb: EraSuperblock,
  into: Buffer = Buffer.alloc(METADATA_BLOCK_SIZE),
): Buffer {
  into.fill(0);
  into.writeUInt32LE(sb.cleanShutdown ? CLEAN_SHUTDOWN : 0, 4);
  // 8: block number (the validator's), 16: uuid (unused, zeros, as the kernel leaves it)
  writeU64(into, 32, ERA_MAGIC);
  into.writeUInt32LE(ERA_VERSION, 40);
  encodeSpaceMapRoot(sb.metadataSpaceMap, into, 44);
  into.writeUInt32LE(sb.dataBlockSectors, 172);
  into.writeUInt32LE(8, 176); // metadata block size in sectors
  into.writeUInt32LE(sb.nrBlocks, 180);
  into.writeUInt32LE(sb.currentEra, 184);
  into.writeUInt32LE(sb.currentWriteset.nrBits, 188);
  writeU64(into, 192, sb.currentWriteset.root);
  writeU64(into, 200, sb.writesetTreeRoot);
  writeU64(into, 208, sb.eraArrayRoot);
  writeU64(into, 216, sb.metadataSnap);
  return into;
}

export function decodeEraSuperblock(b: Buffer): EraSuperblock {
  return {
    cleanShutdown: (b.readUInt32LE(4) & CLEAN_SHUTDOWN) !== 0,
    metadataSpaceMap: decodeSpaceMapRoot(b, 44),
    dataBlockSectors: b.readUInt32LE(172),
    nrBlocks: b.readUInt32LE(180),
    currentEra: b.readUInt32LE(184),
    currentWriteset: { nrBits: b.readUInt32LE(188), root: readU64(b, 192) },
    writesetTreeRoot: readU64(b, 200),
    eraArrayRoot: readU64(b, 208),
    metadataSnap: readU64(b, 216),
  };
}

/** A writeset as a writeset-tree value: le32 nr_bits, le64 root, packed (12 bytes). */
export const WRITESET_VALUE_SIZE = 12;

export function encodeWriteset(ws: Writeset): Buffer {
  const b = Buffer.alloc(WRITESET_VALUE_SIZE);
  b.writeUInt32LE(ws.nrBits, 0);
  writeU64(b, 4, ws.root);
  return b;
}

export function decodeWriteset(b: Buffer): Writeset {
  return { nrBits: b.readUInt32LE(0), root: readU64(b, 4) };
}
