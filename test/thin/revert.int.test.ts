// Reverting a device to one of its snapshots on the real engine: the device reads what the
// snapshot holds, older and newer snapshots stay readable and unchanged, blocks only the device
// held are freed, writes after the revert leave the snapshot alone, and the metadata stays valid
// for our checker and both thin_check versions, across a reopen.
import path from 'node:path';
import { run } from '../../src/exec';
import { checkMetadata } from '../../src/thin/check';
import { Pool } from '../../src/thin/pool';
import { thinpool } from '../helpers/cli';
import { thinCheckBoth, thinDump } from '../helpers/thin-oracle';
import { makeTempDir } from '../helpers/tmp';

const BLOCK = 64 * 1024;
const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

const fill = (byte: number, blocks = 1) => Buffer.alloc(blocks * BLOCK, byte);

async function expectBlocks(pool: Pool, id: number, want: number[]): Promise<void> {
  const got = await pool.device(id, { readOnly: true }).read(0, want.length * BLOCK);
  const seen = want.map((_, i) => got[i * BLOCK]);
  expect(seen).toEqual(want);
  for (let i = 0; i < want.length; i++)
    expect(got.subarray(i * BLOCK, (i + 1) * BLOCK).every((x) => x === want[i])).toBe(true);
}

async function checkClean(dir: string): Promise<void> {
  const metadata = path.join(dir, 'metadata');
  expect(checkMetadata(metadata).errors).toEqual([]);
  for (const c of await thinCheckBoth(metadata)) expect(c).toMatchObject({ code: 0 });
}

it('reverts a volume to a snapshot between two others, frees its own blocks and keeps every snapshot', async () => {
  const dir = path.join(tmp.dir, 'revert');
  let pool = await Pool.create(dir, { dataSizeBytes: 2 ** 26 }, { commitIntervalMs: 0 });
  await pool.createThin(1, 8 * BLOCK);
  const vol = pool.device(1);
  await vol.write(0, fill(0xa1, 4)); // blocks 0-3: A
  await pool.createSnap(2, 1); // older snapshot: A A A A
  await vol.write(BLOCK, fill(0xb2, 2)); // blocks 1-2: B
  await vol.write(5 * BLOCK, fill(0xb5)); // block 5: B
  await pool.createSnap(3, 1); // the one to revert to: A B B A 0 B
  await pool.createSnap(4, 3); // a snapshot of it
  await vol.write(0, fill(0xc0)); // after it: C B B A 0 B C
  await vol.write(6 * BLOCK, fill(0xc6, 2));
  await vol.flush();
  const usedBefore = pool.status().dataBlocksUsed;

  const info = await pool.revertDevice(1, 3);
  expect(info.details.mappedBlocks).toBe(pool.deviceInfo(3).details.mappedBlocks);
  await expectBlocks(pool, 1, [0xa1, 0xb2, 0xb2, 0xa1, 0, 0xb5, 0, 0]);
  await expectBlocks(pool, 2, [0xa1, 0xa1, 0xa1, 0xa1, 0, 0, 0, 0]);
  await expectBlocks(pool, 3, [0xa1, 0xb2, 0xb2, 0xa1, 0, 0xb5, 0, 0]);
  // Blocks 0, 6 and 7 of the volume's last state belonged to it alone.
  expect(pool.status().dataBlocksUsed).toBe(usedBefore - 3);

  // Writes after the revert copy: the snapshot keeps its blocks.
  await vol.write(BLOCK, fill(0xd1));
  await vol.write(2 * BLOCK, Buffer.alloc(4096, 0xd2));
  await vol.flush();
  await expectBlocks(pool, 3, [0xa1, 0xb2, 0xb2, 0xa1, 0, 0xb5, 0, 0]);
  await expectBlocks(pool, 4, [0xa1, 0xb2, 0xb2, 0xa1, 0, 0xb5, 0, 0]);
  const two = await vol.read(2 * BLOCK, BLOCK);
  expect(two.subarray(0, 4096).every((x) => x === 0xd2)).toBe(true);
  expect(two.subarray(4096).every((x) => x === 0xb2)).toBe(true);
  await pool.close();
  await checkClean(dir);

  pool = await Pool.open(dir, { commitIntervalMs: 0 });
  await expectBlocks(pool, 3, [0xa1, 0xb2, 0xb2, 0xa1, 0, 0xb5, 0, 0]);
  expect((await pool.device(1).read(BLOCK, BLOCK)).every((x) => x === 0xd1)).toBe(true);
  expect(pool.status().catalogue).toMatchObject({ adopted: [], missing: [] });
  // A revert straight after a revert (the same tree) takes no extra reference.
  await pool.revertDevice(1, 3);
  await pool.revertDevice(1, 3);
  await expectBlocks(pool, 1, [0xa1, 0xb2, 0xb2, 0xa1, 0, 0xb5, 0, 0]);
  await pool.close();
  await checkClean(dir);
  // thin_dump agrees: the volume's mappings are the snapshot's.
  const xml = await thinDump(path.join(dir, 'metadata'));
  const devices = [...xml.matchAll(/<device dev_id="(\d+)"[^>]*>([\s\S]*?)<\/device>/g)];
  const mappingsOf = (id: number) => devices.find((m) => m[1] === String(id))?.[2];
  expect(mappingsOf(1)).toMatch(/mapping/);
  // thin_ls agrees on the blocks each device maps.
  const ls = await run('thin_ls', [
    '--no-headers',
    '--format',
    'DEV,MAPPED_BLOCKS',
    path.join(dir, 'metadata'),
  ]);
  const mapped = new Map(
    ls.stdout
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/).map(Number) as [number, number]),
  );
  expect(mapped.get(1)).toBe(mapped.get(3));
  expect(mapped.get(3)).toBe(5);
  expect(mapped.get(2)).toBe(4);
  expect(mappingsOf(1)).toBe(mappingsOf(3));
});

it('grows the volume to a larger snapshot, and refuses a device that is not its snapshot', async () => {
  const dir = path.join(tmp.dir, 'sizes');
  const pool = await Pool.create(dir, { dataSizeBytes: 2 ** 26 }, { commitIntervalMs: 0 });
  await pool.createThin(1, 4 * BLOCK);
  await pool.device(1).write(0, fill(0x11));
  await pool.createSnap(2, 1, { sizeBytes: 6 * BLOCK });
  await pool.createThin(3, 4 * BLOCK);
  expect((await pool.revertDevice(1, 2)).sizeBytes).toBe(6 * BLOCK);
  expect(pool.device(1).sizeBytes).toBe(6 * BLOCK);
  await expect(pool.revertDevice(1, 3)).rejects.toThrow('device 3 is not a snapshot of device 1');
  await expect(pool.revertDevice(2, 1)).rejects.toThrow('device 1 is not a snapshot of device 2');
  await expect(pool.revertDevice(1, 9)).rejects.toThrow(/9/);
  await pool.close();
  await checkClean(dir);
});

it('reverts offline with thinpool thin revert; a kill before the superblock keeps the old state, one after it the new', async () => {
  const dir = path.join(tmp.dir, 'cli');
  const pool = await Pool.create(dir, { dataSizeBytes: 2 ** 26 }, { commitIntervalMs: 0 });
  await pool.createThin(1, 4 * BLOCK);
  await pool.device(1).write(0, fill(0x21));
  await pool.createSnap(2, 1);
  await pool.device(1).write(0, fill(0x22));
  await pool.close();

  // Killed with every block but the superblock on disk: the old state, whole; killed right
  // after the commit: the new one.
  for (const [point, reads] of [
    ['commit:before-superblock', 0x22],
    ['revert:after-pool-commit', 0x21],
  ] as const) {
    const killed = await thinpool(['thin', 'revert', dir, '1', '--to', '2'], {
      env: { THINPOOL_FAULT_POINT: point },
    });
    expect(killed.code).toBe(128 + 9);
    await checkClean(dir);
    const reopened = await Pool.open(dir, { commitIntervalMs: 0 });
    expect((await reopened.device(1).read(0, BLOCK)).every((x) => x === reads)).toBe(true);
    await reopened.close();
  }
  const again = await Pool.open(dir, { commitIntervalMs: 0 });
  await again.device(1).write(0, fill(0x23));
  await again.close();

  const r = await thinpool(['thin', 'revert', dir, '1', '--to', '2', '--json']);
  expect(r.code).toBe(0);
  expect(JSON.parse(r.stdout)).toMatchObject({ id: 1, sizeBytes: 4 * BLOCK });
  const bad = await thinpool(['thin', 'revert', dir, '2', '--to', '1']);
  expect(bad.code).not.toBe(0);
  expect(bad.stderr).toMatch(/device 1 is not a snapshot of device 2/);
  await checkClean(dir);
});
