// Data round trips with real clients: nbdcopy and qemu-img convert in and out (checksums),
// and qemu-io write/read/discard/zero/flush patterns checked against an in-test model.
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startTestServer, type TestServer, tool } from './helpers';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Random image with zero runs, so copies exercise both data and sparse paths. */
function randomImage(bytes: number): Buffer {
  const image = randomBytes(bytes);
  for (let at = 0; at < bytes; at += 4 * MiB) image.fill(0, at + MiB, at + 2 * MiB);
  return image;
}

describe('copies and patterns through real clients', () => {
  let t: TestServer;

  beforeAll(async () => {
    t = await startTestServer({ sizeBytes: SIZE });
  });
  afterAll(() => t.close());

  it('nbdcopy writes a random image in and reads it back out unchanged (TCP and unix)', async () => {
    const image = randomImage(SIZE);
    const source = path.join(t.dir, 'in.img');
    const back = path.join(t.dir, 'out.img');
    await writeFile(source, image);
    await tool('nbdcopy', ['--connections=4', '--requests=16', source, t.uri('disk')]);
    await tool('nbdcopy', [t.unixUri('disk'), back]);
    expect(sha256(await readFile(back))).toBe(sha256(image));
    // The server really stored it (not just echoed): read the backing file directly.
    expect(sha256(await t.device.read(0, SIZE))).toBe(sha256(image));
  });

  it('qemu-img convert writes in and reads out unchanged', async () => {
    const image = randomImage(SIZE);
    const source = path.join(t.dir, 'q-in.img');
    const back = path.join(t.dir, 'q-out.img');
    await writeFile(source, image);
    await tool('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, t.uri('disk')]);
    await tool('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', t.unixUri('disk'), back]);
    expect(sha256(await readFile(back))).toBe(sha256(image));
    await tool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, t.uri('disk')]);
  });

  it('qemu-io write/read/discard/write_zeroes/flush patterns match a model', async () => {
    const model = Buffer.alloc(SIZE, 0x5a);
    await t.device.write(0, Buffer.alloc(SIZE, 0x5a));
    const steps: Array<{ command: string; apply?: () => void }> = [];
    const write = (pattern: number, offset: number, length: number): void => {
      steps.push({
        command: `write -P 0x${pattern.toString(16)} ${offset} ${length}`,
        apply: () => model.fill(pattern, offset, offset + length),
      });
    };
    const zero = (offset: number, length: number, unmap: boolean): void => {
      steps.push({
        command: `write -z ${unmap ? '-u ' : ''}${offset} ${length}`,
        apply: () => model.fill(0, offset, offset + length),
      });
    };
    write(0xab, 0, 64 * 1024);
    write(0xcd, 64 * 1024, 4096);
    write(0x01, 3 * MiB + 512, 7 * 512);
    write(0xfe, 20 * MiB, 3 * MiB);
    zero(21 * MiB, MiB, false);
    zero(10 * MiB, 2 * MiB, true);
    // Discarded ranges read back as zeros on FileBlockDevice.
    steps.push({ command: `discard ${4 * MiB} ${MiB}`, apply: () => model.fill(0, 4 * MiB, 5 * MiB) });
    steps.push({ command: 'flush' });
    write(0x77, SIZE - 8192, 8192);
    steps.push({
      command: `aio_write -P 0x42 ${6 * MiB} ${MiB}`,
      apply: () => model.fill(0x42, 6 * MiB, 7 * MiB),
    });
    steps.push({ command: 'aio_flush' });
    // FUA writes.
    steps.push({
      command: `write -f -P 0x99 ${8 * MiB} 65536`,
      apply: () => model.fill(0x99, 8 * MiB, 8 * MiB + 65536),
    });

    const args = ['-f', 'raw', t.uri('disk')];
    for (const step of steps) {
      args.push('-c', step.command);
      step.apply?.();
    }
    // Verify a set of regions against the model, each with its expected single-byte pattern.
    const regions: Array<[number, number]> = [
      [0, 64 * 1024],
      [64 * 1024, 4096],
      [3 * MiB + 512, 3584],
      [4 * MiB, MiB],
      [6 * MiB, MiB],
      [8 * MiB, 65536],
      [10 * MiB, 2 * MiB],
      [20 * MiB, MiB],
      [21 * MiB, MiB],
      [22 * MiB, MiB],
      [SIZE - 8192, 8192],
      [30 * MiB, MiB],
    ];
    for (const [offset, length] of regions) {
      args.push('-c', `read -P 0x${model[offset].toString(16)} ${offset} ${length}`);
    }
    const { stdout } = await tool('qemu-io', args);
    expect(stdout).not.toMatch(/Pattern verification failed|failed|error/i);
    expect(stdout.match(/^read /gm)).toHaveLength(regions.length);
    // And the whole device equals the model byte for byte.
    expect(sha256(await t.device.read(0, SIZE))).toBe(sha256(model));
  });
});
