// `thinpool thin ...` and `thinpool pool msnap ...` as a user runs them.
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { thinpool } from '../helpers/cli';
import { makeTempDir } from '../helpers/tmp';
import { thinCheckBoth, thinDump } from '../helpers/thin-oracle';
import { runTool, thinTool } from '../helpers/tools';

const tmp = makeTempDir();
afterAll(() => tmp.cleanup());
const ok = async (args: string[]) => {
  const r = await thinpool(args);
  expect({ args, code: r.code, stderr: r.stderr }).toEqual({ args, code: 0, stderr: '' });
  return r.stdout;
};

describe('thinpool thin', () => {
  const dir = path.join(tmp.dir, 'pool');
  const image = path.join(tmp.dir, 'image');

  beforeAll(async () => {
    await ok(['pool', 'create', dir, '--data-size', '1G']);
    // 16 MiB image: random data at 1 MiB, 5 MiB and the last 64 KiB; zeros elsewhere.
    const img = Buffer.alloc(16 * 2 ** 20);
    randomBytes(300 * 1024).copy(img, 2 ** 20);
    randomBytes(64 * 1024).copy(img, 5 * 2 ** 20);
    randomBytes(64 * 1024).copy(img, 16 * 2 ** 20 - 64 * 1024);
    fs.writeFileSync(image, img);
  });

  it('imports an image sparsely and exports it back byte for byte with holes kept', async () => {
    const stats = JSON.parse(await ok(['thin', 'import', dir, '1', image, '--json']));
    expect(stats.bytesCopied).toBe((320 + 64 + 64) * 1024); // 300 KiB rounds up to 5 blocks
    const list = JSON.parse(await ok(['thin', 'list', dir, '--json']));
    expect(list.devices).toMatchObject([{ id: 1, sizeBytes: 16 * 2 ** 20, details: { mappedBlocks: 7 } }]);
    const out = path.join(tmp.dir, 'out');
    await ok(['thin', 'export', dir, '1', out]);
    expect(fs.readFileSync(out).equals(fs.readFileSync(image))).toBe(true);
    expect(fs.statSync(out).blocks * 512).toBeLessThan(2 * 2 ** 20);
  });

  it('snapshots, diverges and reports the delta the way thin_delta does', async () => {
    await ok(['thin', 'snap', dir, '2', '1']);
    const patch = path.join(tmp.dir, 'patch');
    fs.writeFileSync(patch, fs.readFileSync(image));
    await ok(['thin', 'snap', dir, '3', '1']);
    await ok(['thin', 'delete', dir, '1']);
    const ranges = JSON.parse(await ok(['thin', 'delta', dir, '2', '3', '--json'])).ranges;
    expect(ranges).toEqual([]);
    // Write new data into device 3 at block 100 through import into a fresh device, then compare.
    const img2 = Buffer.from(fs.readFileSync(image));
    randomBytes(4096).copy(img2, 100 * 65536);
    fs.writeFileSync(patch, img2);
    await ok(['thin', 'import', dir, '4', patch]);
    const d = JSON.parse(await ok(['thin', 'delta', dir, '2', '4', '--json'])).ranges;
    // Device 4 was imported separately, so every mapped block differs, plus block 100 is new.
    expect(d).toContainEqual({ begin: 100, length: 1, kind: 'right_only' });
    const r = await runTool(thinTool('thin_delta', '0.9'), [
      '--thin1',
      '2',
      '--thin2',
      '4',
      path.join(dir, 'metadata'),
    ]);
    expect(r.stdout).toContain('<right_only begin="100" length="1"/>');
  });

  it('reserves and releases the metadata snapshot, and refuses a second reserve', async () => {
    const held = JSON.parse(await ok(['pool', 'msnap', 'reserve', dir, '--json'])).heldMetadataRoot;
    expect(held).toBeGreaterThan(0);
    expect(JSON.parse(await ok(['pool', 'status', dir, '--json'])).heldMetadataRoot).toBe(held);
    const second = await thinpool(['pool', 'msnap', 'reserve', dir]);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/already held/);
    expect(await thinDump(path.join(dir, 'metadata'), ['-m'])).toContain('dev_id="2"');
    const delta = JSON.parse(await ok(['thin', 'delta', dir, '2', '3', '--metadata-snap', '--json']));
    expect(delta.ranges).toEqual([]);
    await ok(['pool', 'msnap', 'release', dir]);
    expect(JSON.parse(await ok(['pool', 'status', dir, '--json'])).heldMetadataRoot).toBeNull();
    for (const c of await thinCheckBoth(path.join(dir, 'metadata'))) expect(c).toMatchObject({ code: 0 });
    expect((await ok(['pool', 'check', dir])).startsWith('clean')).toBe(true);
  });

  it('gives clear errors for bad ids and missing devices', async () => {
    const bad = await thinpool(['thin', 'create', dir, '16777216', '--size', '1M']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/outside 0\.\.16777215/);
    const missing = await thinpool(['thin', 'snap', dir, '50', '49']);
    expect(missing.stderr).toMatch(/thin device 49 does not exist/);
    const dup = await thinpool(['thin', 'create', dir, '2', '--size', '1M']);
    expect(dup.stderr).toMatch(/thin device 2 already exists/);
    const odd = await thinpool(['thin', 'create', dir, '60', '--size', '1000']);
    expect(odd.stderr).toMatch(/multiple of 512/);
  });
});
