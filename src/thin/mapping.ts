// Values of the thin trees: a mapping packs (data block << 24) | time into a le64; device
// details are 24 bytes.

export const MAX_TIME = 0xffffff;
export const MAX_DATA_BLOCKS = 2 ** 40;
export const MAX_DEVICE_ID = 0xffffff;

export interface Mapping {
  dataBlock: number;
  time: number;
}

export function encodeMapping(m: Mapping, into: Buffer = Buffer.alloc(8), offset = 0): Buffer {
  into.writeUIntLE(m.time, offset, 3);
  into.writeUIntLE(m.dataBlock, offset + 3, 5);
  return into;
}

export function decodeMapping(from: Buffer, offset = 0): Mapping {
  return { time: from.readUIntLE(offset, 3), dataBlock: from.readUIntLE(offset + 3, 5) };
}

export function mappedDataBlock(from: Buffer): number {
  return from.readUIntLE(3, 5);
}

export interface DeviceDetails {
  mappedBlocks: number;
  transactionId: number;
  creationTime: number;
  snapshottedTime: number;
}

export const DEVICE_DETAILS_SIZE = 24;

export function encodeDetails(d: DeviceDetails): Buffer {
  const b = Buffer.alloc(DEVICE_DETAILS_SIZE);
  b.writeUIntLE(d.mappedBlocks, 0, 6);
  b.writeUIntLE(d.transactionId, 8, 6);
  b.writeUInt32LE(d.creationTime, 16);
  b.writeUInt32LE(d.snapshottedTime, 20);
  return b;
}

export function decodeDetails(b: Buffer): DeviceDetails {
  return {
    mappedBlocks: b.readUIntLE(0, 6),
    transactionId: b.readUIntLE(8, 6),
    creationTime: b.readUInt32LE(16),
    snapshottedTime: b.readUInt32LE(20),
  };
}
