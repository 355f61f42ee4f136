// A client that sends options without reading the replies must not make the server buffer
// those replies without bound: haggling stops reading once its unsent replies pass a limit.
import net from 'node:net';
import { log } from '../../src/log';
import * as P from '../../src/nbd/protocol';
import { encodeOption } from '../../src/nbd/wire';
import { startTestServer, type TestServer } from './helpers';
import { RawClient } from './raw-client';

const MiB = 1024 * 1024;

describe('handshake backpressure', () => {
  let t: TestServer;
  const level = log.level;
  beforeAll(async () => {
    log.level = 'error';
    t = await startTestServer({ sizeBytes: 4 * MiB, serverOptions: { handshakeTimeoutMs: 20_000 } });
  });
  afterAll(async () => {
    await t.close();
    log.level = level;
  });

  it('stops reading options while the replies to earlier ones are unsent', async () => {
    const socket = net.connect(t.port, '127.0.0.1');
    socket.on('error', () => undefined);
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    // No 'data' listener: this client never reads. Each 32-byte INFO earns ~90 bytes of replies.
    const info = encodeOption(P.NBD_OPT_INFO, RawClient.infoRequest('disk', [P.NBD_INFO_BLOCK_SIZE]));
    const options = 300_000;
    const stream = Buffer.alloc(4 + options * info.length);
    stream.writeUInt32BE(3, 0);
    for (let i = 0; i < options; i++) info.copy(stream, 4 + i * info.length);
    socket.write(stream);
    type Peek = { socket: net.Socket; queue: { length: number } };
    const [connection] = (t.server as unknown as { connections: Set<Peek> }).connections;
    let unsent = 0;
    let queued = 0;
    for (let i = 0; i < 30; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      unsent = Math.max(unsent, connection.socket.writableLength);
      queued = Math.max(queued, connection.queue.length);
    }
    // Answering all of it unread would leave ~26 MB of replies with the server (13 MB after 3 s
    // before the fix); the limit is 256 KiB plus the replies to one option.
    expect(unsent).toBeLessThan(256 * 1024 + 1024);
    expect(queued).toBeLessThan(256 * 1024 + 64 * 1024);

    // Once the client reads, haggling resumes and every option is answered.
    const expected = 18 + options * (20 + 12 + 20 + 14 + 20);
    let received = 0;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${received} of ${expected} bytes`)), 20_000);
      socket.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received >= expected) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    expect(received).toBe(expected);

    // Others are served meanwhile.
    const other = await RawClient.open({ port: t.port });
    await other.go('disk');
    expect((await other.read(0, 4096)).error).toBe(0);
    other.close();
    socket.destroy();
  }, 30_000);
});
