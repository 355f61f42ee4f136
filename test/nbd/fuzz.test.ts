// Hostile clients, the CI-sized run: >100,000 generated frames (test/nbd/fuzz-frames.ts, the same
// grammar as the long campaign test/stress/nbd-fuzz.ts) over many concurrent connections, a close
// at every byte of a short conversation, and a client that never reads its replies, while two
// well-behaved clients keep writing and verifying. The server must keep serving, never crash,
// and keep its memory bounded. Replay a failure with NBD_FUZZ_SEED=<seed>.
import net from 'node:net';
import { log } from '../../src/log';
import * as P from '../../src/nbd/protocol';
import { encodeOption, encodeRequest, encodeU32 } from '../../src/nbd/wire';
import { seededRandom } from '../helpers/random';
import { FuzzStats, goodClient, runHostile } from './fuzz-clients';
import { type FuzzExport, hostileScript, sweepFrames } from './fuzz-frames';
import { HoleyDevice, startTestServer, type TestServer } from './helpers';
import { RawClient } from './raw-client';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const GOOD_START = SIZE - 2 * MiB;

const EXPORTS: FuzzExport[] = [
  { name: 'disk', sizeBytes: SIZE, readOnly: false, contexts: [], protect: { start: GOOD_START, end: SIZE } },
  { name: 'holey', sizeBytes: 4 * MiB, readOnly: false, contexts: ['thinpool:delta:q'] },
  { name: 'ro', sizeBytes: SIZE, readOnly: true, contexts: [] },
];

describe('fuzzing the NBD server', () => {
  let t: TestServer;

  const level = log.level;
  beforeAll(async () => {
    // Every hostile connection earns a warning; thousands of them would only bury the result.
    log.level = 'error';
    t = await startTestServer({
      sizeBytes: SIZE,
      serverOptions: { maxPendingBytesPerConnection: 8 * MiB, handshakeTimeoutMs: 5000 },
      extraExports: (device) => [
        {
          name: 'holey',
          device: new HoleyDevice(4 * MiB),
          access: { kind: 'open' },
          metaContexts: { 'thinpool:delta:q': async (_o, length) => [{ length, flags: 1 }] },
        },
        { name: 'ro', device, readOnly: true, access: { kind: 'open' } },
      ],
    });
  });
  afterAll(async () => {
    await t.close();
    log.level = level;
  });

  it('survives 100,000+ hostile frames while good clients keep working, with bounded memory', async () => {
    const seed = Number(process.env.NBD_FUZZ_SEED ?? Date.now() % 1e9);
    const target = { port: t.port };
    const stats = new FuzzStats();
    let stopping = false;
    const good = (['simple', 'extended'] as const).map((mode, i) =>
      goodClient({
        target,
        exportName: 'disk',
        region: { start: GOOD_START + i * MiB, end: GOOD_START + (i + 1) * MiB },
        mode,
        seed: seed + i,
        stop: () => stopping,
        opTimeoutMs: 10_000,
      }),
    );

    // A close at every byte of a short conversation, in each reply mode.
    for (const mode of ['simple', 'structured', 'extended'] as const) {
      const frames = sweepFrames(EXPORTS[1], mode);
      const total = frames.reduce((n, f) => n + f.bytes.length, 0);
      for (let cut = 0; cut <= total; cut += 8) {
        const close = cut % 16 === 0 ? 'destroy' : 'end';
        const script = {
          scenario: 'sweep',
          frames,
          cutAt: cut,
          readReplies: true,
          trickle: false,
          lingerMs: 1,
          close,
        } as const;
        await runHostile(target, script, stats);
      }
    }
    const before = process.memoryUsage();

    const deadline = Date.now() + 40_000;
    await Promise.all(
      Array.from({ length: 8 }, async (_, worker) => {
        const rand = seededRandom(seed * 31 + worker);
        while (stats.frames < 110_000 && Date.now() < deadline) {
          await runHostile(target, hostileScript(rand, EXPORTS), stats);
        }
      }),
    );
    const after = process.memoryUsage();
    stopping = true;
    const results = await Promise.all(good);

    expect({ seed, frames: stats.frames >= 100_000 }).toEqual({ seed, frames: true });
    // Every scenario ran, and the server answered a good share of the frames (≥ 16 bytes a reply).
    expect([...stats.byScenario.keys()].sort()).toEqual(
      expect.arrayContaining([
        'garbage',
        'haggle',
        'session-extended',
        'session-simple',
        'session-structured',
      ]),
    );
    expect(stats.replyBytes).toBeGreaterThan(16 * 50_000);
    expect(stats.connectFailures).toBe(0);
    for (const result of results) {
      expect({ seed, errors: result.errors }).toEqual({ seed, errors: [] });
      // Verified progress while the fuzzers ran, not just at the end.
      expect(result.ops.get('read') ?? 0).toBeGreaterThanOrEqual(20);
    }
    expect(after.heapUsed - before.heapUsed).toBeLessThan(64 * MiB);
    expect(after.rss - before.rss).toBeLessThan(256 * MiB);

    // Still serving new clients, and nothing is left behind.
    const fresh = await RawClient.open(target);
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
      encodeU32(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES),
      encodeOption(P.NBD_OPT_GO, RawClient.infoRequest('disk', [])),
    ]);
    const reads: Buffer[] = [];
    for (let i = 0; i < 4000; i++) {
      reads.push(encodeRequest(false, 0, P.NBD_CMD_READ, i, (i % 15) * MiB, MiB));
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
