import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { FileBlockDevice } from '../../src/file-block-device';

const MiB = 1024 * 1024;

describe('FileBlockDevice', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'fbd-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it.each([0, 65536])('reads back what it wrote (syncIoMaxBytes=%d)', async (syncIoMaxBytes) => {
    const device = await FileBlockDevice.open(path.join(dir, `rw-${syncIoMaxBytes}.img`), {
      sizeBytes: 4 * MiB,
      syncIoMaxBytes,
    });
    expect(device.sizeBytes).toBe(4 * MiB);
    const small = Buffer.alloc(4096, 7);
    const large = Buffer.alloc(2 * MiB, 9);
    await device.write(512, small);
    await device.write(MiB, large, { fua: true });
    expect((await device.read(512, 4096)).equals(small)).toBe(true);
    expect((await device.read(MiB, 2 * MiB)).equals(large)).toBe(true);
    const into = Buffer.alloc(8192, 1);
    await device.readInto(0, into);
    expect(into.subarray(0, 512).equals(Buffer.alloc(512))).toBe(true);
    await device.flush();
    await device.close();
  });

  it('rejects misaligned or out-of-range requests with RangeError', async () => {
    const device = await FileBlockDevice.open(path.join(dir, 'range.img'), { sizeBytes: MiB });
    await expect(device.read(100, 512)).rejects.toThrow(RangeError);
    await expect(device.read(0, 100)).rejects.toThrow(RangeError);
    await expect(device.write(MiB, Buffer.alloc(512))).rejects.toThrow(RangeError);
    await expect(device.trim(MiB - 512, 1024)).rejects.toThrow(RangeError);
    await expect(device.blockStatus(-512, 512)).rejects.toThrow(RangeError);
    expect(await device.blockStatus(0, MiB)).toEqual([{ offset: 0, length: MiB, hole: false, zero: false }]);
    await device.close();
  });

  it('zeroes on trim and writeZeroes, and keeps never-written ranges sparse', async () => {
    const file = path.join(dir, 'sparse.img');
    const device = await FileBlockDevice.open(file, { sizeBytes: 64 * MiB });
    await device.write(8 * MiB, Buffer.alloc(MiB, 0xff));
    const blocksBefore = (await stat(file)).blocks;
    await device.trim(0, 64 * MiB); // like mkfs's whole-device discard
    expect((await device.read(8 * MiB, MiB)).equals(Buffer.alloc(MiB))).toBe(true);
    // Only the written MiB was rewritten (as zeros); nothing else got allocated.
    expect((await stat(file)).blocks).toBeLessThanOrEqual(blocksBefore);
    await device.write(0, Buffer.alloc(4096, 1));
    await device.writeZeroes(0, 4096, { noHole: true, fua: true });
    expect((await device.read(0, 4096)).equals(Buffer.alloc(4096))).toBe(true);
    await device.close();
  });

  it('opens an existing file read-only and refuses writes with EROFS; ignores a ragged tail', async () => {
    const file = path.join(dir, 'ro.img');
    await writeFile(file, Buffer.alloc(MiB + 100, 3));
    const device = await FileBlockDevice.open(file, { readOnly: true });
    expect(device.readOnly).toBe(true);
    expect(device.sizeBytes).toBe(MiB);
    await expect(device.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EROFS' });
    expect((await device.read(0, 512)).equals(Buffer.alloc(512, 3))).toBe(true);
    await device.close();
    await expect(device.read(0, 512)).rejects.toThrow(/closed/);
  });
});
