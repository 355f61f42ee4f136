// Direct receive (src/nbd/direct-receive.ts): an accepted socket moved onto one whose reads go
// where we say, then the whole server with it: large and odd-sized WRITEs from qemu-io land
// intact, and the server still closes cleanly.
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { adoptWithDirectReceive } from '../../src/nbd/direct-receive';
import { startTestServer, tool } from './helpers';

const MiB = 1024 * 1024;

describe('direct receive', () => {
  it('reads a payload straight into the sink in reads larger than 64 KiB, the rest into views', async () => {
    const dir = os.tmpdir();
    const socketPath = path.join(dir, `direct-receive-${process.pid}.sock`);
    const payload = Buffer.alloc(4 * MiB);
    for (let i = 0; i < payload.length; i += 4) payload.writeUInt32LE(i, i);
    const trailer = Buffer.from('after the payload');
    const sink = Buffer.alloc(payload.length);
    let filled = 0;
    let sinkReads = 0;
    const slab: Buffer[] = [];
    let ended!: () => void;
    const endedPromise = new Promise<void>((resolve) => (ended = resolve));
    const server = net.createServer((socket) => {
      const adopted = adoptWithDirectReceive(socket, {
        sink: () => (filled < sink.length ? sink.subarray(filled) : undefined),
        sinkFilled: (bytes) => {
          filled += bytes;
          sinkReads++;
        },
        slabData: (view) => slab.push(Buffer.from(view)),
        slabIdle: () => true,
      });
      expect(adopted).toBeDefined();
      adopted!.on('end', () => {
        adopted!.end();
        ended();
      });
    });
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    const client = net.connect(socketPath);
    client.write(payload);
    client.end(trailer);
    await endedPromise;
    expect(filled).toBe(payload.length);
    expect(sink.equals(payload)).toBe(true);
    expect(Buffer.concat(slab).equals(trailer)).toBe(true);
    // Node's own reads are 64 KiB each: 64 of them for 4 MiB. Fewer means bigger reads.
    expect(sinkReads).toBeLessThan(64);
    // The retired socket no longer counts as a connection, so close() completes.
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  // 1 MiB through the slab in 4 KiB pieces: a consumed slab is rewound (one slab for all of it),
  // while views still held keep their bytes (new slabs instead).
  for (const consume of [true, false]) {
    it(`${consume ? 'rewinds the slab once its bytes are consumed' : 'never overwrites slab bytes still held'}`, async () => {
      const socketPath = path.join(os.tmpdir(), `direct-receive-slab-${consume}-${process.pid}.sock`);
      const sent = Buffer.alloc(MiB);
      for (let i = 0; i < sent.length; i += 4) sent.writeUInt32LE(Math.imul(i, 2654435761) >>> 0, i);
      const held: Buffer[] = [];
      const copies: Buffer[] = [];
      const slabs = new Set<ArrayBufferLike>();
      let ended!: () => void;
      const endedPromise = new Promise<void>((resolve) => (ended = resolve));
      const server = net.createServer((socket) => {
        const adopted = adoptWithDirectReceive(socket, {
          sink: () => undefined,
          sinkFilled: () => undefined,
          slabData: (view) => {
            slabs.add(view.buffer);
            if (consume) copies.push(Buffer.from(view));
            else held.push(view);
          },
          slabIdle: () => consume,
        });
        adopted!.on('end', () => {
          adopted!.end();
          ended();
        });
      });
      await new Promise<void>((resolve) => server.listen(socketPath, resolve));
      const client = net.connect(socketPath);
      for (let at = 0; at < sent.length; at += 4096) {
        client.write(sent.subarray(at, at + 4096));
        if (at % (64 * 1024) === 0) await new Promise((resolve) => setImmediate(resolve));
      }
      client.end();
      await endedPromise;
      expect(Buffer.concat(consume ? copies : held).equals(sent)).toBe(true);
      if (consume) expect(slabs.size).toBe(1);
      else expect(slabs.size).toBeGreaterThanOrEqual(4);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });
  }

  it('leaves a socket with unsent output alone', async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    const socket = await accepted;
    socket.cork();
    socket.write('queued');
    const target = {
      sink: () => undefined,
      sinkFilled: () => undefined,
      slabData: () => undefined,
      slabIdle: () => true,
    };
    expect(adoptWithDirectReceive(socket, target)).toBeUndefined();
    socket.destroy();
    client.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('sees a client leave at once after DISC, although input was paused for it', async () => {
    const t = await startTestServer({ sizeBytes: 8 * MiB });
    try {
      await tool('qemu-io', ['-f', 'raw', t.unixUri('disk'), '-c', 'write -P 0x7 0 1M']);
      const started = Date.now();
      while (t.server.connectionCount('disk') > 0 && Date.now() - started < 4000)
        await new Promise((resolve) => setTimeout(resolve, 20));
      // The server's own fallback closes after 5 s; the client's close must be seen well before.
      expect(t.server.connectionCount('disk')).toBe(0);
      expect(Date.now() - started).toBeLessThan(1000);
    } finally {
      await t.close();
    }
  });

  it('stores large, odd-sized and pipelined WRITEs from qemu-io intact', async () => {
    const t = await startTestServer({ sizeBytes: 64 * MiB });
    try {
      // Sizes around and far beyond a socket read; aio_write keeps them in flight together.
      const writes: Array<[number, number, number]> = [
        [0, 4 * MiB, 0x11],
        [4 * MiB + 512, MiB + 512, 0x22],
        [8 * MiB, 32 * MiB, 0x33],
        [41 * MiB, 65536 + 512, 0x44],
        [42 * MiB, 512, 0x55],
        [43 * MiB - 4096, 8192, 0x66],
      ];
      const model = Buffer.alloc(64 * MiB);
      const commands: string[] = [];
      for (const [offset, length, pattern] of writes) {
        model.fill(pattern, offset, offset + length);
        commands.push('-c', `aio_write -P 0x${pattern.toString(16)} ${offset} ${length}`);
      }
      commands.push('-c', 'aio_flush');
      const { stdout } = await tool('qemu-io', ['-f', 'raw', t.unixUri('disk'), ...commands]);
      expect(stdout).not.toMatch(/failed|error/i);
      expect((await t.device.read(0, 64 * MiB)).equals(model)).toBe(true);
      // And back out through the same server, over TCP this time.
      const reads = writes.flatMap(([offset, length, pattern]) => [
        '-c',
        `read -P 0x${pattern.toString(16)} ${offset} ${length}`,
      ]);
      const readBack = (await tool('qemu-io', ['-f', 'raw', t.uri('disk'), ...reads])).stdout;
      expect(readBack).not.toMatch(/Pattern verification failed|failed|error/i);
      expect(readBack.match(/^read /gm)).toHaveLength(writes.length);
    } finally {
      await t.close();
    }
  });
});
