// Server lifecycle: connection limit, timeouts, EXPORT_NAME, export removal, failing
// devices and an orderly close.
import type { BlockDevice } from '../../src/block-device';
import { NbdServer } from '../../src/nbd';
import * as P from '../../src/nbd/protocol';
import { HoleyDevice } from './helpers';
import { RawClient } from './raw-client';

const MiB = 1024 * 1024;

async function listening(server: NbdServer): Promise<number> {
  const bound = await server.listen({ host: '127.0.0.1', port: 0 });
  if (!('port' in bound)) throw new Error('expected a TCP address');
  return bound.port;
}

/** A device whose reads of one range fail with EIO and whose writes report ENOSPC. */
class FailingDevice extends HoleyDevice {
  override async read(offset: number, length: number): Promise<Buffer> {
    if (offset >= MiB) throw Object.assign(new Error('disk on fire'), { code: 'EIO' });
    return super.read(offset, length);
  }
  override async write(offset: number, data: Buffer): Promise<void> {
    if (offset >= MiB) throw Object.assign(new Error('pool full'), { code: 'ENOSPC' });
    return super.write(offset, data);
  }
}

describe('NbdServer', () => {
  const servers: NbdServer[] = [];
  const make = (options: ConstructorParameters<typeof NbdServer>[0] = {}): NbdServer => {
    const server = new NbdServer(options);
    server.addExport({ name: 'vol', device: new HoleyDevice(2 * MiB), access: { kind: 'open' } });
    servers.push(server);
    return server;
  };
  afterAll(async () => {
    for (const server of servers) await server.close(500);
  });

  it('closes connections beyond the limit at once', async () => {
    const server = make({ maxConnections: 2 });
    const port = await listening(server);
    const a = await RawClient.open({ port });
    const b = await RawClient.open({ port });
    const c = await RawClient.connect({ port });
    await c.closed;
    expect(c.queue.length).toBe(0); // not even a greeting
    a.close();
    b.close();
  });

  it('drops a client that stalls in the handshake, and an idle one when asked', async () => {
    const server = make({ handshakeTimeoutMs: 200, idleTimeoutMs: 300 });
    const port = await listening(server);
    const staller = await RawClient.open({ port });
    const started = Date.now();
    await staller.closed;
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    const idle = await RawClient.open({ port });
    await idle.go('vol');
    expect((await idle.read(0, 512)).error).toBe(0);
    await idle.closed;
  });

  it('supports EXPORT_NAME with and without the 124 zero bytes', async () => {
    const server = make();
    const port = await listening(server);
    for (const [clientFlags, expected] of [
      [3, 10],
      [1, 134],
    ]) {
      const client = await RawClient.open({ port }, clientFlags);
      client.sendOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('vol'));
      const reply = await client.queue.read(expected);
      expect(reply.readUInt32BE(4)).toBe(2 * MiB);
      expect(reply.readUInt16BE(8) & P.NBD_FLAG_HAS_FLAGS).toBeTruthy();
      client.startTransmission();
      expect((await client.read(0, 512)).error).toBe(0);
      client.close();
    }
    // An unknown name can't be refused politely with EXPORT_NAME: the server hangs up.
    const client = await RawClient.open({ port });
    client.sendOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('missing'));
    await client.closed;
  });

  it('maps device failures to NBD errors and keeps the connection', async () => {
    const server = new NbdServer();
    servers.push(server);
    server.addExport({
      name: 'bad',
      device: new FailingDevice(2 * MiB) as BlockDevice,
      access: { kind: 'open' },
    });
    const port = await listening(server);
    const client = await RawClient.open({ port });
    await client.go('bad'); // simple replies: no hole shortcut, READ always reaches the device
    expect((await client.read(MiB, 4096)).error).toBe(P.NBD_EIO);
    expect((await client.writeData(MiB, Buffer.alloc(4096))).error).toBe(P.NBD_ENOSPC);
    expect((await client.read(0, 4096)).error).toBe(0);
    client.close();
  });

  it('disconnects clients of a removed export and refuses new ones', async () => {
    const server = make();
    server.addExport({ name: 'other', device: new HoleyDevice(MiB), access: { kind: 'open' } });
    const port = await listening(server);
    const victim = await RawClient.open({ port });
    await victim.go('vol');
    const bystander = await RawClient.open({ port });
    await bystander.go('other');
    expect(server.connectionCount('vol')).toBe(1);
    expect(await server.removeExport('vol')).toBe(true);
    await victim.closed;
    expect(server.connectionCount('vol')).toBe(0);
    expect((await bystander.read(0, 512)).error).toBe(0);
    const late = await RawClient.open({ port });
    const replies = await late.option(P.NBD_OPT_GO, RawClient.infoRequest('vol'));
    expect(replies.pop()?.type).toBe(P.NBD_REP_ERR_UNKNOWN);
    late.close();
    bystander.close();
    expect(await server.removeExport('vol')).toBe(false);
  });

  it('closes gracefully: in-flight requests are answered, then the socket closes', async () => {
    const slowDevice = new HoleyDevice(MiB);
    const originalRead = slowDevice.read.bind(slowDevice);
    slowDevice.read = async (offset, length) => {
      await new Promise((resolve) => setTimeout(resolve, 200));
      return originalRead(offset, length);
    };
    const server = new NbdServer();
    server.addExport({ name: 'slow', device: slowDevice, access: { kind: 'open' } });
    const port = await listening(server);
    const client = await RawClient.open({ port });
    await client.go('slow');
    const pending = client.read(0, 4096);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const closing = server.close(2000);
    expect((await pending).error).toBe(0);
    await client.closed;
    await closing;
    await expect(RawClient.connect({ port })).rejects.toThrow();
  });
});
