// The NBD client (backup and restore use it) against our server (in process) and two independent
// servers (nbdkit memory, qemu-nbd on qcow2), so it is known to be a real client, not our mirror.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NbdClient, NbdConnectionPool, NbdError, parseNbdEndpoint } from '../../src/nbd/client';
import { HoleyDevice, startTestServer, type TestServer } from './helpers';

const MiB = 1024 * 1024;

async function waitForSocket(file: string, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (fs.existsSync(file)) return;
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${file} did not appear`);
}

/** Writes, reads back, pipelines and flushes: what backup and restore need from any server. */
async function roundTrip(client: NbdClient): Promise<void> {
  const blocks = Array.from({ length: 32 }, (_, i) => ({
    offset: i * 256 * 1024,
    data: randomBytes(64 * 1024),
  }));
  await Promise.all(blocks.map((b) => client.write(b.offset, b.data)));
  await client.flush();
  const reads = await Promise.all(blocks.map((b) => client.read(b.offset, b.data.length)));
  reads.forEach((r, i) => expect(r.data.equals(blocks[i].data)).toBe(true));
  // A read spanning data and never-written space: the gap reads as zeros.
  const span = await client.read(0, 512 * 1024);
  expect(span.data.subarray(0, 64 * 1024).equals(blocks[0].data)).toBe(true);
  expect(span.data.subarray(64 * 1024, 256 * 1024).every((b) => b === 0)).toBe(true);
  expect(client.bytesRequested).toBe(32 * 64 * 1024 + 512 * 1024);
}

describe('NBD client against the thinpool NBD server', () => {
  let t: TestServer;
  let holey: HoleyDevice;
  beforeAll(async () => {
    holey = new HoleyDevice(16 * MiB);
    t = await startTestServer({
      sizeBytes: 32 * MiB,
      extraExports: () => [
        { name: 'holey', device: holey, access: { kind: 'open' }, sparseReads: true },
        { name: 'ro', device: holey, access: { kind: 'open' }, readOnly: true },
        { name: 'secret', device: holey, access: { kind: 'secret', secret: 's3cret-value' } },
      ],
    });
  });
  afterAll(() => t.close());

  test('handshake reports size, flags and block sizes; TCP and unix socket', async () => {
    for (const address of [{ host: '127.0.0.1', port: t.port }, { path: t.socketPath }]) {
      const c = await NbdClient.connect(address, 'disk');
      expect(c.info.sizeBytes).toBe(32 * MiB);
      expect(c.info.structuredReplies).toBe(true);
      expect(c.info.canMultiConn).toBe(true);
      expect(c.info.readOnly).toBe(false);
      expect(c.info.minBlockBytes).toBe(512);
      expect(c.info.maxPayloadBytes).toBe(32 * MiB);
      await c.close();
    }
  });

  test('round trip with structured and with simple replies', async () => {
    for (const structuredReplies of [true, false]) {
      const c = await NbdClient.connect({ path: t.socketPath }, 'disk', { structuredReplies });
      expect(c.info.structuredReplies).toBe(structuredReplies);
      await roundTrip(c);
      await c.close();
    }
  });

  test('holes come back as OFFSET_HOLE (no data on the wire); block status', async () => {
    const data = randomBytes(64 * 1024);
    await holey.write(MiB, data);
    const c = await NbdClient.connect({ path: t.socketPath }, 'holey', { metaContexts: ['base:allocation'] });
    const r = await c.read(0, 4 * MiB);
    expect(r.holeBytes).toBe(4 * MiB - 64 * 1024);
    expect(c.bytesReceived).toBe(64 * 1024);
    expect(r.data.subarray(MiB, MiB + 64 * 1024).equals(data)).toBe(true);
    expect(r.data.subarray(0, MiB).every((b) => b === 0)).toBe(true);
    const extents = await c.blockStatus(0, 4 * MiB);
    expect(extents[0]).toEqual({ length: MiB, flags: 3 });
    expect(extents[1]).toEqual({ length: 64 * 1024, flags: 0 });
    await c.close();
  });

  test('errors: read-only export, out of range, unknown export, secret export', async () => {
    const ro = await NbdClient.connect({ path: t.socketPath }, 'ro');
    expect(ro.info.readOnly).toBe(true);
    await expect(ro.write(0, Buffer.alloc(512))).rejects.toThrow(NbdError);
    await expect(ro.read(16 * MiB, 512)).rejects.toThrow(RangeError);
    await ro.close();
    await expect(NbdClient.connect({ path: t.socketPath }, 'nope')).rejects.toThrow(/unknown export/);
    await expect(NbdClient.connect({ path: t.socketPath }, 'secret/wrong-secret')).rejects.toThrow(
      /access denied/,
    );
    const ok = await NbdClient.connect({ path: t.socketPath }, 'secret/s3cret-value');
    expect(ok.info.sizeBytes).toBe(16 * MiB);
    await ok.close();
  });

  test('server-side errors reach the caller and the connection survives', async () => {
    const c = await NbdClient.connect({ path: t.socketPath }, 'disk');
    // A misaligned length passes our range check but the server answers EINVAL.
    await expect(c.read(1, 100)).rejects.toMatchObject({ code: 22 });
    expect((await c.read(0, 512)).data.length).toBe(512);
    await c.close();
  });

  test('a pool of connections pipelines reads across sockets', async () => {
    const pool = await NbdConnectionPool.open({ path: t.socketPath }, 'disk', 4);
    expect(pool.clients.length).toBe(4);
    const payload = randomBytes(8 * MiB);
    await Promise.all(
      Array.from({ length: 8 }, (_, i) => pool.write(i * MiB, payload.subarray(i * MiB, (i + 1) * MiB))),
    );
    await pool.flush();
    const reads = await Promise.all(
      Array.from({ length: 64 }, (_, i) => pool.read(i * 128 * 1024, 128 * 1024)),
    );
    expect(Buffer.concat(reads.map((r) => r.data)).equals(payload)).toBe(true);
    expect(t.server.connectionCount('disk')).toBe(4);
    expect(pool.bytesRequested).toBe(8 * MiB);
    await pool.close();
  });

  test('endpoint parsing', () => {
    expect(parseNbdEndpoint('127.0.0.1:10809')).toEqual({ host: '127.0.0.1', port: 10809 });
    expect(parseNbdEndpoint('[::1]:10809')).toEqual({ host: '::1', port: 10809 });
    expect(parseNbdEndpoint('unix:///run/nbd.sock')).toEqual({ path: '/run/nbd.sock' });
    expect(parseNbdEndpoint('/run/nbd.sock')).toEqual({ path: '/run/nbd.sock' });
    expect(() => parseNbdEndpoint('nonsense')).toThrow(RangeError);
  });
});

describe('NBD client against other servers', () => {
  let dir: string;
  const children: ChildProcess[] = [];
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'backup-nbd-peers-'));
  });
  afterAll(() => {
    for (const c of children) c.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('nbdkit memory', async () => {
    const sock = path.join(dir, 'nbdkit.sock');
    const child = spawn('nbdkit', ['-f', '-U', sock, 'memory', '64M'], { stdio: 'ignore' });
    children.push(child);
    await waitForSocket(sock, child);
    const c = await NbdClient.connect({ path: sock }, '');
    expect(c.info.sizeBytes).toBe(64 * MiB);
    expect(c.info.structuredReplies).toBe(true);
    await roundTrip(c);
    await c.writeZeroes(0, MiB);
    expect((await c.read(0, MiB)).data.every((b) => b === 0)).toBe(true);
    await c.close();
  });

  test('qemu-nbd on qcow2', async () => {
    const image = path.join(dir, 'disk.qcow2');
    const sock = path.join(dir, 'qemu.sock');
    const create = spawn('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M'], { stdio: 'ignore' });
    await new Promise((r) => create.on('exit', r));
    const child = spawn('qemu-nbd', ['-k', sock, '-f', 'qcow2', '-t', '-e', '4', image], { stdio: 'ignore' });
    children.push(child);
    await waitForSocket(sock, child);
    const pool = await NbdConnectionPool.open({ path: sock }, '', 2);
    await roundTrip(pool.clients[0]);
    // qemu-nbd answers unwritten qcow2 clusters as holes.
    const r = await pool.read(32 * MiB, MiB);
    expect(r.holeBytes).toBe(MiB);
    await pool.close();
  });
});
