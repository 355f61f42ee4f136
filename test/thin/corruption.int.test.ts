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
async function buildPool(): Promise<string> {
  const dir = path.join(tmp.dir, 'pool');
  const pool = await Pool.create(
    dir,
    { dataSizeBytes: 2 ** 30, metadataSizeBytes: 8 * 2 ** 20 },
    { commitIntervalMs: 0 },
  );
  await pool.createThin(1, 2 ** 30);
  const dev = pool.device(1);
  const page = Buffer.alloc(4096, 0xab);
  for (let v = 0; v < 600; v++) await dev.write(v * 3 * 65536, page);
  await pool.createSnap(2, 1);
  await pool.createSnap(3, 1);
  await pool.createSnap(4, 2);
  for (let v = 0; v < 50; v++) await pool.device(2).write(v * 65536, page);
  await pool.reserveMetadataSnap();
  await dev.write(5000 * 65536, page);
  await pool.close();
  return dir;
}

/** Every metadata block the pool uses (our checker proves these counts equal the references). */
function referencedBlocks(metadata: string): number[] {
  const md = ThinMetadata.open(metadata, { readOnly: true });
  try {
    const blocks: number[] = [];
    for (let b = 0; b < md.metadataSm.counts.nrBlocks; b++)
      if (md.metadataSm.counts.count(b) > 0) blocks.push(b);
    return blocks;
  } finally {
    md.close();
  }
}

async function openError(dir: string): Promise<string> {
  try {
    await (await Pool.open(dir, { readOnly: true, commitIntervalMs: 0 })).close();
    return '';
  } catch (e) {
    return (e as Error).message;
  }
}

describe('a flipped byte in a metadata block', () => {
  let dir: string;
  let metadata: string;
  let pristine: Buffer;
  let blocks: number[];
  beforeAll(async () => {
    dir = await buildPool();
    metadata = poolPaths(dir).metadata;
    pristine = fs.readFileSync(metadata);
    blocks = referencedBlocks(metadata);
  });

  it('the pristine pool checks clean and opens', async () => {
    expect(checkMetadata(metadata).errors).toEqual([]);
    expect(await openError(dir)).toBe('');
    expect(blocks.length).toBeGreaterThan(20);
  });

  it('in any used block makes open fail, naming the block and its type', async () => {
    const seenTypes = new Set<string>();
    for (const block of blocks) {
      const damaged = Buffer.from(pristine);
      // Vary the byte: header, keys, values and the unused tail are all covered by the checksum.
      const offset = 4 + ((block * 977) % 4092);
      damaged[block * 4096 + offset] ^= 0x40;
      fs.writeFileSync(metadata, damaged);
      const message = await openError(dir);
      expect({ block, message }).toEqual({
        block,
        message: expect.stringMatching(new RegExp(`\\(block ${block}\\)`)),
      });
      const type = /in (superblock|btree node|space map bitmap|metadata index block)/.exec(message)?.[1];
      expect({ block, message, type }).toEqual({ block, message, type: expect.any(String) });
      seenTypes.add(type!);
    }
    fs.writeFileSync(metadata, pristine);
    expect([...seenTypes].sort()).toEqual([
      'btree node',
      'metadata index block',
      'space map bitmap',
      'superblock',
    ]);
  });

  it('in a free block goes unnoticed, as it should', async () => {
    const md = ThinMetadata.open(metadata, { readOnly: true });
    const free = md.metadataSm.counts.nrBlocks - 1;
    expect(md.metadataSm.counts.count(free)).toBe(0);
    md.close();
    const damaged = Buffer.from(pristine);
    damaged[free * 4096 + 100] ^= 1;
    fs.writeFileSync(metadata, damaged);
    expect(await openError(dir)).toBe('');
    fs.writeFileSync(metadata, pristine);
  });

  it('a file that is not a pool is refused with a clear message', async () => {
    const other = path.join(tmp.dir, 'notapool');
    fs.mkdirSync(other);
    fs.writeFileSync(path.join(other, 'metadata'), Buffer.alloc(1 << 20, 7));
    fs.writeFileSync(path.join(other, 'data'), Buffer.alloc(1 << 16));
    expect(await openError(other)).toMatch(/superblock \(block 0\)/);
  });
});
