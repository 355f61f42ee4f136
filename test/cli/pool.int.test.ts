// `thinpool pool create|status|check` as a user runs them, judged by thin_check and thin_dump.
import fs from 'node:fs';
import path from 'node:path';
import { thinpool } from '../helpers/cli';
import { makeTempDir } from '../helpers/tmp';
import { thinCheckBoth, thinDump } from '../helpers/thin-oracle';

const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

describe('thinpool pool create', () => {
  it.each([
    ['64k', '10G', 128, 163840],
    ['1m', '3G', 2048, 3072],
    ['192k', '1G', 384, 5461],
  ])(
    'with block size %s and data size %s passes both thin_check versions',
    async (block, data, sectors, blocks) => {
      const dir = path.join(tmp.dir, `pool-${block}`);
      const created = await thinpool([
        'pool',
        'create',
        dir,
        '--data-size',
        data,
        '--block-size',
        block,
        '--json',
      ]);
      expect(created).toMatchObject({ code: 0 });
      const status = JSON.parse(created.stdout);
      expect(status).toMatchObject({
        dataBlocksTotal: blocks,
        dataBlockBytes: sectors * 512,
        transactionId: 0,
        devices: 0,
      });

      const metadata = path.join(dir, 'metadata');
      for (const r of await thinCheckBoth(metadata)) expect(r).toMatchObject({ code: 0 });
      const dump = await thinDump(metadata);
      expect(dump).toContain(`data_block_size="${sectors}"`);
      expect(dump).toContain(`nr_data_blocks="${blocks}"`);

      // No tool checks the magic number or the superblock's own location; the kernel does.
      const sb = Buffer.alloc(64);
      const fd = fs.openSync(metadata, 'r');
      fs.readSync(fd, sb, 0, 64, 0);
      fs.closeSync(fd);
      expect(sb.subarray(0x20, 0x28)).toEqual(Buffer.from([0xba, 0x52, 0x9c, 0x01, 0, 0, 0, 0]));
      expect(sb.subarray(0x08, 0x10)).toEqual(Buffer.alloc(8));
      expect(sb.readUInt32LE(0x28)).toBe(2);

      // Both files are sparse: creating a 10G pool must not write 10G.
      expect(fs.statSync(path.join(dir, 'data')).blocks * 512).toBeLessThan(1 << 20);
    },
  );

  it('prints the status of an existing pool, human and JSON', async () => {
    const dir = path.join(tmp.dir, 'status');
    expect(await thinpool(['pool', 'create', dir, '--data-size', '1G'])).toMatchObject({ code: 0 });
    const human = await thinpool(['pool', 'status', dir]);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/transaction id\s+0/);
    expect(human.stdout).toMatch(/data blocks\s+0 used of 16384/);
    expect(human.stdout).toMatch(/held metadata root\s+-/);
    const json = JSON.parse((await thinpool(['pool', 'status', dir, '--json'])).stdout);
    expect(json).toMatchObject({
      dataBlocksUsed: 0,
      dataBlocksTotal: 16384,
      heldMetadataRoot: null,
      devices: 0,
    });
    expect(json.metadataBlocksUsed).toBeGreaterThan(0);
    const check = await thinpool(['pool', 'check', dir]);
    expect(check).toMatchObject({ code: 0 });
    expect(check.stdout).toMatch(/^clean/);
  });

  it.each([
    [['--data-size', '1G', '--block-size', '96k'], /multiple of 64 KiB/],
    [['--data-size', '1G', '--block-size', '2G'], /between 64 KiB and 1 GiB/],
    [['--data-size', '1G', '--block-size', '32k'], /multiple of 64 KiB/],
    [['--data-size', '10k'], /smaller than one/],
    [['--data-size', 'lots'], /cannot read "lots" as a size/],
    [['--data-size', '1G', '--metadata-size', '100k'], /below the 1 MiB minimum/],
    [[], /--data-size/],
  ])('refuses %j with a clear message', async (args, message) => {
    const dir = path.join(tmp.dir, `bad-${Math.random().toString(36).slice(2)}`);
    const r = await thinpool(['pool', 'create', dir, ...args]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(message);
    expect(fs.existsSync(path.join(dir, 'metadata'))).toBe(false);
  });

  it('refuses to overwrite an existing pool', async () => {
    const dir = path.join(tmp.dir, 'twice');
    expect(await thinpool(['pool', 'create', dir, '--data-size', '1G'])).toMatchObject({ code: 0 });
    const before = fs.readFileSync(path.join(dir, 'metadata'));
    const again = await thinpool(['pool', 'create', dir, '--data-size', '2G']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already holds a pool/);
    expect(fs.readFileSync(path.join(dir, 'metadata')).equals(before)).toBe(true);
  });

  it('warns and uses only the addressable part of oversized metadata', async () => {
    const dir = path.join(tmp.dir, 'bigmeta');
    const r = await thinpool([
      'pool',
      'create',
      dir,
      '--data-size',
      '1G',
      '--metadata-size',
      '17G',
      '--json',
    ]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/exceeds what the format can address/);
    expect(JSON.parse(r.stdout).metadataBlocksTotal).toBe(255 * 16320);
    for (const c of await thinCheckBoth(path.join(dir, 'metadata'))) expect(c).toMatchObject({ code: 0 });
  });

  it('refuses to open something that is not a pool', async () => {
    const dir = path.join(tmp.dir, 'garbage');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'metadata'), Buffer.alloc(1 << 20, 0x5a));
    fs.writeFileSync(path.join(dir, 'data'), '');
    const r = await thinpool(['pool', 'status', dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/superblock \(block 0\)/);
    const missing = await thinpool(['pool', 'status', path.join(tmp.dir, 'nothing-here')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/is not a pool/);
  });
});
