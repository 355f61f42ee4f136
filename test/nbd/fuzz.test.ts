// Hostile clients: >100,000 malformed or random handshake and transmission frames over many
// connections, abrupt closes and a client that never reads its replies, while a well-behaved
// client keeps writing and verifying on its own connection. The server must keep serving,
// never crash, and keep its memory bounded.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { log } from '../../src/log';
import * as P from '../../src/nbd/protocol';
import { HoleyDevice, startTestServer, type TestServer } from './helpers';
import { RawClient } from './raw-client';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

/** Small deterministic PRNG (mulberry32), so a failing run can be replayed from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Rand = () => number;
const pick = <T>(rand: Rand, items: readonly T[]): T => items[Math.floor(rand() * items.length)];
const int = (rand: Rand, below: number): number => Math.floor(rand() * below);

function option(code: number, data: Buffer): Buffer {
  const header = Buffer.alloc(16);
  header.write('IHAVEOPT', 0, 'latin1');
  header.writeUInt32BE(code, 8);
  header.writeUInt32BE(data.length, 12);
  return Buffer.concat([header, data]);
}

/** An option the server must answer and then keep haggling (never GO/EXPORT_NAME/ABORT). */
function randomOption(rand: Rand): { frame: Buffer; enablesExtended: boolean } {
  const code = pick(rand, [
    P.NBD_OPT_LIST,
    P.NBD_OPT_PEEK_EXPORT,
    P.NBD_OPT_INFO,
    P.NBD_OPT_STRUCTURED_REPLY,
    P.NBD_OPT_LIST_META_CONTEXT,
    P.NBD_OPT_SET_META_CONTEXT,
    P.NBD_OPT_EXTENDED_HEADERS,
    P.NBD_OPT_STARTTLS,
    12 + int(rand, 1000),
    0x80000000 + int(rand, 1000),
  ]);
  let data: Buffer;
  switch (int(rand, 5)) {
    case 0:
      data = Buffer.alloc(0);
      break;
    case 1:
      data = randomBytes(int(rand, 64));
      break;
    case 2:
      data = RawClient.infoRequest(pick(rand, ['disk', 'holey', '', 'nope', 'disk/x']), [int(rand, 5)]);
      if (rand() < 0.5) data.writeUInt32BE(int(rand, 0xffffffff), 0); // name length lies
      break;
    case 3:
      data = RawClient.metaRequest(pick(rand, ['disk', 'holey', 'zz']), [
        pick(rand, ['base:allocation', 'base:', 'thinpool:', 'x', '', 'thinpool:delta:q']),
      ]);
      if (rand() < 0.5) data.writeUInt32BE(int(rand, 0xffffffff), data.length - 4 - 1); // query length lies
      break;
    default:
      data = Buffer.alloc(int(rand, 16));
  }
  return {
    frame: option(code, data),
    enablesExtended: code === P.NBD_OPT_EXTENDED_HEADERS && data.length === 0,
  };
}

/** A request the server must answer (possibly with an error) without dropping the connection. */
function randomRequest(rand: Rand, extended: boolean): Buffer {
  const type = pick(rand, [0, 0, 1, 3, 4, 5, 6, 7, 8, 9, 200]);
  const flags = rand() < 0.7 ? 0 : int(rand, 0x40) & ~(extended ? 0 : P.NBD_CMD_FLAG_PAYLOAD_LEN);
  let offset = pick(rand, [0, 512 * int(rand, SIZE / 512), SIZE - 512, SIZE, 2 ** 40, 2 ** 53 + 2 ** 20, 7]);
  let length = pick(rand, [0, 512, 4096, 1 + int(rand, 70000), 65536, SIZE + 512]);
  // Never touch the good client's region (the last 1 MiB): anything that writes aims lower.
  const writes = type === P.NBD_CMD_WRITE || type === P.NBD_CMD_TRIM || type === P.NBD_CMD_WRITE_ZEROES;
  if (writes && offset < SIZE && offset + Math.min(length, 70000) > SIZE - MiB) offset = 0;
  let payload = 0;
  const payloadLen = extended && (flags & P.NBD_CMD_FLAG_PAYLOAD_LEN) !== 0;
  if ((!extended && type === P.NBD_CMD_WRITE) || payloadLen) {
    length = Math.min(length, 8192);
    payload = length;
  }
  const header = Buffer.alloc(extended ? 32 : 28);
  header.writeUInt32BE(extended ? P.NBD_EXTENDED_REQUEST_MAGIC : P.NBD_REQUEST_MAGIC, 0);
  header.writeUInt16BE(flags & (extended ? 0xffff : ~P.NBD_CMD_FLAG_PAYLOAD_LEN & 0xffff), 4);
  header.writeUInt16BE(type, 6);
  header.writeUInt32BE(int(rand, 0xffffffff), 8);
  header.writeUInt32BE(int(rand, 0xffffffff), 12);
  header.writeUInt32BE(Math.floor(offset / 2 ** 32) >>> 0, 16);
  header.writeUInt32BE(offset >>> 0, 20);
  if (extended) {
    header.writeUInt32BE(0, 24);
    header.writeUInt32BE(length, 28);
  } else {
    header.writeUInt32BE(length, 24);
  }
  return payload > 0 ? Buffer.concat([header, Buffer.alloc(payload, 0xaa)]) : header;
}

/** Something that ends the connection: bad magic, oversized payload, garbage, truncation. */
function fatalTail(rand: Rand, phase: 'options' | 'transmission', extended: boolean): Buffer {
  switch (int(rand, 5)) {
    case 0:
      return randomBytes(1 + int(rand, 100));
    case 1:
      return phase === 'options' ? option(P.NBD_OPT_LIST, Buffer.alloc(0)).subarray(0, 10) : randomBytes(3);
    case 2: {
      const header = randomRequest(rand, extended).subarray(0, extended ? 32 : 28);
      header.writeUInt16BE(P.NBD_CMD_WRITE, 6);
      header.writeUInt16BE(extended ? P.NBD_CMD_FLAG_PAYLOAD_LEN : 0, 4);
      header.writeUInt32BE(0x7fffffff, extended ? 28 : 24); // payload far beyond the maximum
      return header;
    }
    case 3: {
      const header = Buffer.from(randomRequest(rand, extended).subarray(0, extended ? 32 : 28));
      header.writeUInt16BE(P.NBD_CMD_WRITE, 6);
      header.writeUInt16BE(extended ? P.NBD_CMD_FLAG_PAYLOAD_LEN : 0, 4);
      header.writeUInt32BE(0, 16);
      header.writeUInt32BE(0, 20);
      header.writeUInt32BE(65536, extended ? 28 : 24);
      return Buffer.concat([header, Buffer.alloc(1000)]); // truncated payload, then close
    }
    default:
      return phase === 'options' ? option(P.NBD_OPT_EXPORT_NAME, Buffer.from('nope')) : Buffer.alloc(0);
  }
}

interface FuzzStats {
  frames: number;
  connections: number;
  replyBytes: number;
}

/** One hostile connection: a batch of random frames, then a fatal tail or an abrupt close. */
async function fuzzConnection(port: number, rand: Rand, stats: FuzzStats): Promise<void> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  socket.on('data', (chunk: Buffer) => (stats.replyBytes += chunk.length)); // count and drop replies
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  stats.connections++;
  const parts: Buffer[] = [];
  const flagsRoll = rand();
  parts.push(Buffer.from([0, 0, 0, flagsRoll < 0.03 ? int(rand, 256) : 3]));
  const optionCount = int(rand, 60);
  let extended = false;
  for (let i = 0; i < optionCount; i++) {
    const { frame, enablesExtended } = randomOption(rand);
    parts.push(frame);
    extended ||= enablesExtended;
  }
  stats.frames += 1 + optionCount;
  if (rand() < 0.15) {
    parts.push(fatalTail(rand, 'options', false));
    stats.frames++;
  } else {
    if (!extended && rand() < 0.3) {
      parts.push(option(P.NBD_OPT_EXTENDED_HEADERS, Buffer.alloc(0)));
      extended = true;
    } else if (rand() < 0.5) parts.push(option(P.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0)));
    if (rand() < 0.5)
      parts.push(option(P.NBD_OPT_SET_META_CONTEXT, RawClient.metaRequest('holey', ['base:allocation'])));
    parts.push(option(P.NBD_OPT_GO, RawClient.infoRequest(pick(rand, ['disk', 'holey']), [])));
    const requests = 50 + int(rand, 350);
    for (let i = 0; i < requests; i++) parts.push(randomRequest(rand, extended));
    stats.frames += 2 + requests;
    if (rand() < 0.7) {
      parts.push(fatalTail(rand, 'transmission', extended));
      stats.frames++;
    }
  }
  const stream = Buffer.concat(parts);
  // Sometimes cut the stream anywhere and slam the door.
  const cut = rand() < 0.2 ? int(rand, stream.length) : stream.length;
  socket.write(stream.subarray(0, cut));
  await new Promise((resolve) => setTimeout(resolve, 5 + int(rand, 40)));
  if (rand() < 0.5) socket.destroy();
  else socket.end();
  await new Promise<void>((resolve) => {
    if (socket.destroyed) resolve();
    else socket.once('close', () => resolve());
    setTimeout(() => {
      socket.destroy();
      resolve();
    }, 3000);
  });
}

/** The well-behaved client: writes, flushes and verifies its own region until told to stop. */
async function goodClient(
  port: number,
  stop: () => boolean,
  progress: { ops: number },
): Promise<{ ops: number; errors: string[] }> {
  const client = await RawClient.open({ port });
  await client.go('disk', { structured: true });
  const errors: string[] = [];
  let ops = 0;
  const base = SIZE - MiB;
  while (!stop()) {
    const offset = base + 4096 * Math.floor(Math.random() * 192);
    const data = randomBytes(4096 * (1 + Math.floor(Math.random() * 64)));
    const wrote = await client.writeData(offset, data);
    if (wrote.error) errors.push(`write error ${wrote.error}`);
    const read = await client.read(offset, data.length);
    if (read.error || !read.data?.equals(data)) errors.push(`read mismatch at ${offset}`);
    if ((await client.request(P.NBD_CMD_FLUSH, 0, 0)).error) errors.push('flush failed');
    ops += 3;
    progress.ops = ops;
  }
  client.disconnect();
  await client.closed;
  return { ops, errors };
}

describe('fuzzing the NBD server', () => {
  let t: TestServer;

  const level = log.level;
  beforeAll(async () => {
    // Every hostile connection earns a warning; thousands of them would only bury the result.
    log.level = 'error';
    t = await startTestServer({
      sizeBytes: SIZE,
      serverOptions: { maxPendingBytesPerConnection: 8 * MiB, handshakeTimeoutMs: 5000 },
      extraExports: () => [
        {
          name: 'holey',
          device: new HoleyDevice(4 * MiB),
          access: { kind: 'open' },
          metaContexts: { 'thinpool:delta:q': async (_o, length) => [{ length, flags: 1 }] },
        },
      ],
    });
  });
  afterAll(async () => {
    await t.close();
    log.level = level;
  });

  it('survives 100,000+ hostile frames while a good client keeps working, with bounded memory', async () => {
    const seed = Number(process.env.NBD_FUZZ_SEED ?? Date.now() % 1e9);
    const rand = prng(seed);
    const stats: FuzzStats = { frames: 0, connections: 0, replyBytes: 0 };
    let stopping = false;
    const progress = { ops: 0 };
    const good = goodClient(t.port, () => stopping, progress);

    // Warm up, then take the memory baseline.
    for (let i = 0; i < 20; i++) await fuzzConnection(t.port, rand, stats);
    const before = process.memoryUsage();
    const opsBefore = progress.ops;

    const workers = 8;
    const deadline = Date.now() + 45_000;
    await Promise.all(
      Array.from({ length: workers }, async () => {
        while (stats.frames < 110_000 && Date.now() < deadline) await fuzzConnection(t.port, rand, stats);
      }),
    );
    const after = process.memoryUsage();
    const opsDuringFuzz = progress.ops - opsBefore;
    stopping = true;
    const result = await good;

    console.log(
      `fuzz seed=${seed} frames=${stats.frames} connections=${stats.connections} good-ops=${result.ops} ` +
        `(during fuzz ${opsDuringFuzz}) ` +
        `reply-bytes=${stats.replyBytes} ` +
        `heap +${((after.heapUsed - before.heapUsed) / MiB).toFixed(1)} MiB rss +${((after.rss - before.rss) / MiB).toFixed(1)} MiB`,
    );
    expect(stats.frames).toBeGreaterThanOrEqual(100_000);
    // The server answered most frames rather than hanging up early (≥ 16 bytes per reply).
    expect(stats.replyBytes).toBeGreaterThan(16 * 50_000);
    expect(result.errors).toEqual([]);
    // The good client kept making verified progress while the fuzzers ran (timing-independent bound).
    expect(opsDuringFuzz).toBeGreaterThanOrEqual(30);
    expect(after.heapUsed - before.heapUsed).toBeLessThan(64 * MiB);
    expect(after.rss - before.rss).toBeLessThan(256 * MiB);

    // Still serving new clients, and nothing is left behind.
    const fresh = await RawClient.open({ port: t.port });
    await fresh.go('disk');
    expect((await fresh.read(0, 4096)).error).toBe(0);
    fresh.disconnect();
    await fresh.closed;
    for (let i = 0; i < 100 && t.server.connectionCount() > 0; i++)
      await new Promise((r) => setTimeout(r, 50));
    expect(t.server.connectionCount()).toBe(0);
  }, 120_000);

  it('stops reading from a client that never reads its replies (bounded memory)', async () => {
    const socket = net.connect(t.port, '127.0.0.1');
    socket.on('error', () => undefined);
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.pause(); // never read
    const before = process.memoryUsage().rss;
    const handshake = Buffer.concat([
      Buffer.from([0, 0, 0, 3]),
      option(P.NBD_OPT_GO, RawClient.infoRequest('disk', [])),
    ]);
    const reads: Buffer[] = [];
    for (let i = 0; i < 4000; i++) {
      const header = Buffer.alloc(28);
      header.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0);
      header.writeUInt16BE(P.NBD_CMD_READ, 6);
      header.writeUInt32BE(i, 12);
      header.writeUInt32BE((i % 15) * MiB, 20);
      header.writeUInt32BE(MiB, 24);
      reads.push(header);
    }
    // 4000 × 1 MiB READs = 4 GiB of replies if the server did not stop reading requests.
    socket.write(Buffer.concat([handshake, ...reads]));
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const grown = process.memoryUsage().rss - before;
    expect(grown).toBeLessThan(256 * MiB);
    // Meanwhile other clients are served normally.
    const other = await RawClient.open({ port: t.port });
    await other.go('disk');
    expect((await other.read(0, 65536)).error).toBe(0);
    other.close();
    socket.destroy();
  }, 30_000);
});
