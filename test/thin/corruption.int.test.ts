// Damage is detected, not trusted: flipping one byte in any metadata block that the pool uses
// must make opening it fail with an error that names the block and its type.
import fs from 'node:fs';
import path from 'node:path';
import { Pool } from '../../src/thin/pool';
import { poolPaths } from '../../src/thin/pool-files';
import { checkMetadata } from '../../src/thin/check';
import { ThinMetadata } from '../../src/thin/metadata';
import { makeTempDir } from '../helpers/tmp';

const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

/** A pool with several devices, a snapshot and a held metadata snapshot, so every block type exists. */
function buildPool(): string {
  const dir = path.join(tmp.dir, 'pool');
  Pool.create(dir, { dataSizeBytes: 2 ** 30, metadataSizeBytes: 8 * 2 ** 20 }).close();
  const md = ThinMetadata.open(poolPaths(dir).metadata);
  md.createThin(1);
  for (let v = 0; v < 600; v++) md.insertMapping(1, v * 3, md.allocDataBlock());
  md.createSnap(2, 1);
  md.createSnap(3, 1);
  md.createSnap(4, 2);
  for (let v = 0; v < 50; v++) md.insertMapping(2, v, md.allocDataBlock());
  md.reserveMetadataSnap();
  md.insertMapping(1, 5000, md.allocDataBlock());
  md.commit();
  md.close();
  return dir;
}

/** Every metadata block the pool uses (our checker proves these counts equal the references). */
function referencedBlocks(metadata: string): number[] {
  const md = ThinMetadata.open(metadata, { readOnly: true });
  try {
    const blocks: number[] = [];
    for (let b = 0; b < md.metadataSm.counts.nrBlocks; b++) if (md.metadataSm.counts.count(b) > 0) blocks.push(b);
    return blocks;
  } finally {
    md.close();
  }
}

describe('a flipped byte in a metadata block', () => {
  const dir = buildPool();
  const metadata = poolPaths(dir).metadata;
  const pristine = fs.readFileSync(metadata);
  const blocks = referencedBlocks(metadata);

  it('the pristine pool opens and checks clean', () => {
    expect(checkMetadata(metadata).errors).toEqual([]);
    Pool.open(dir).close();
    expect(blocks.length).toBeGreaterThan(20);
  });

  it('in any used block makes open fail, naming the block and its type', () => {
    const seenTypes = new Set<string>();
    for (const block of blocks) {
      const damaged = Buffer.from(pristine);
      // Vary the byte: header, keys, values and the unused tail are all covered by the checksum.
      const offset = 4 + ((block * 977) % 4092);
      damaged[block * 4096 + offset] ^= 0x40;
      fs.writeFileSync(metadata, damaged);
      let message = '';
      try {
        Pool.open(dir).close();
      } catch (e) {
        message = (e as Error).message;
      }
      expect({ block, message }).toEqual({ block, message: expect.stringMatching(new RegExp(`\\(block ${block}\\)`)) });
      const type = /in (superblock|btree node|space map bitmap|metadata index block)/.exec(message)?.[1];
      expect({ block, message, type }).toEqual({ block, message, type: expect.any(String) });
      seenTypes.add(type!);
    }
    fs.writeFileSync(metadata, pristine);
    expect([...seenTypes].sort()).toEqual(['btree node', 'metadata index block', 'space map bitmap', 'superblock']);
  });

  it('in a free block goes unnoticed, as it should', () => {
    const md = ThinMetadata.open(metadata, { readOnly: true });
    const free = md.metadataSm.counts.nrBlocks - 1;
    expect(md.metadataSm.counts.count(free)).toBe(0);
    md.close();
    const damaged = Buffer.from(pristine);
    damaged[free * 4096 + 100] ^= 1;
    fs.writeFileSync(metadata, damaged);
    expect(() => Pool.open(dir).close()).not.toThrow();
    fs.writeFileSync(metadata, pristine);
  });

  it('a file that is not a pool is refused with a clear message', () => {
    const other = path.join(tmp.dir, 'notapool');
    fs.mkdirSync(other);
    fs.writeFileSync(path.join(other, 'metadata'), Buffer.alloc(1 << 20, 7));
    fs.writeFileSync(path.join(other, 'data'), Buffer.alloc(1 << 16));
    expect(() => Pool.open(other)).toThrow(/superblock \(block 0\)/);
  });
});
