import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BlockManager } from '../../src/pdata/block-manager';
import { BlockValidator, METADATA_BLOCK_SIZE } from '../../src/pdata/block-validator';

// Accepts any bytes: these tests are about caching, not checksums.
const anyBlock: BlockValidator = { name: 'any', prepareForWrite() {}, check() {} };

describe('BlockManager cache', () => {
  let dir: string;
  let file: string;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bm-'));
    file = path.join(dir, 'md');
    const bytes = Buffer.alloc(16 * METADATA_BLOCK_SIZE);
    for (let b = 0; b < 16; b++) bytes.writeUInt32LE(b + 100, b * METADATA_BLOCK_SIZE + 8);
    fs.writeFileSync(file, bytes);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('keeps a block read since the last eviction and evicts the oldest unread one', () => {
    const bm = new BlockManager(file, { cacheBlocks: 4 });
    for (let b = 0; b < 4; b++) bm.read(b, anyBlock);
    bm.read(0, anyBlock); // a hit: block 0 gets a second chance
    bm.read(4, anyBlock); // over the limit: evicts one block
    expect(bm.stats.reads).toBe(5);

    expect(bm.read(0, anyBlock).readUInt32LE(8)).toBe(100);
    expect(bm.stats.reads).toBe(5); // still cached
    expect(bm.read(1, anyBlock).readUInt32LE(8)).toBe(101);
    expect(bm.stats.reads).toBe(6); // block 1 was the one evicted
    bm.close();
  });

  it('never evicts dirty blocks, and evicts clean ones even when all were read again', () => {
    const bm = new BlockManager(file, { cacheBlocks: 2 });
    bm.writable(0, anyBlock).writeUInt32LE(7, 8);
    for (let b = 1; b < 8; b++) bm.read(b, anyBlock);
    for (let b = 1; b < 8; b++) bm.read(b, anyBlock);
    for (let b = 8; b < 12; b++) bm.read(b, anyBlock);
    const reads = bm.stats.reads;
    expect(bm.read(0, anyBlock).readUInt32LE(8)).toBe(7);
    expect(bm.stats.reads).toBe(reads);
    bm.read(1, anyBlock);
    expect(bm.stats.reads).toBe(reads + 1); // evicted though read twice
    bm.flush();
    expect(fs.readFileSync(file).readUInt32LE(8)).toBe(7);
    bm.close();
  });
});
