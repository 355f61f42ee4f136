// nbdinfo (libnbd) against our server: export listing, flags, block-status maps, custom
// meta contexts, read-only and secret-protected exports.
import type { ContextExtent } from '../../src/nbd';
import { HoleyDevice, parseMap, startTestServer, type TestServer, tool } from './helpers';

const MiB = 1024 * 1024;
const SECRET = 'correct-horse-battery';

interface NbdinfoExport {
  'export-name': string;
  description?: string;
  'export-size': number;
  is_read_only: boolean;
  can_trim: boolean;
  can_zero: boolean;
  can_fast_zero: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_multi_conn: boolean;
  can_cache: boolean;
  contexts?: string[];
  block_size_minimum?: number;
  block_size_preferred?: number;
  block_size_maximum?: number;
}

describe('nbdinfo against the NBD server', () => {
  let t: TestServer;
  const holey = new HoleyDevice(8 * MiB);
  // The delta context reports "changed" (flag 1) for [1 MiB, 2 MiB) and [5 MiB, 5.5 MiB).
  const changed: Array<[number, number]> = [
    [1 * MiB, 2 * MiB],
    [5 * MiB, 5.5 * MiB],
  ];
  const deltaCalls: Array<[number, number]> = [];
  async function delta(offset: number, length: number): Promise<ContextExtent[]> {
    deltaCalls.push([offset, length]);
    const out: ContextExtent[] = [];
    const end = offset + length;
    let at = offset;
    while (at < end) {
      const inside = changed.find(([s, e]) => at >= s && at < e);
      const next = inside
        ? Math.min(inside[1], end)
        : Math.min(end, ...changed.map(([s]) => s).filter((s) => s > at), end);
      out.push({ length: next - at, flags: inside ? 1 : 0 });
      at = next;
    }
    return out;
  }

  beforeAll(async () => {
    await holey.write(0, Buffer.alloc(128 * 1024, 0x11));
    await holey.write(3 * MiB, Buffer.alloc(64 * 1024, 0x22));
    await holey.write(6 * MiB, Buffer.alloc(2 * MiB, 0x33));
    t = await startTestServer({
      extraExports: (device) => [
        {
          name: 'holey',
          description: 'a device with holes',
          device: holey,
          access: { kind: 'open' },
          metaContexts: { 'thinpool:delta:base': delta },
        },
        { name: 'snap', description: 'read-only view', device, readOnly: true, access: { kind: 'open' } },
        {
          name: 'vol-secret',
          description: 'needs a secret',
          device,
          access: { kind: 'secret', secret: SECRET },
        },
      ],
    });
  });
  afterAll(() => t.close());

  it('describes an export with its size, flags, block sizes and contexts', async () => {
    const { stdout } = await tool('nbdinfo', ['--json', t.uri('disk')]);
    const info = JSON.parse(stdout) as { protocol: string; exports: NbdinfoExport[] };
    expect(info.protocol).toBe('newstyle-fixed');
    const [disk] = info.exports;
    expect(disk['export-name']).toBe('disk');
    expect(disk.description).toBe('test disk');
    expect(disk['export-size']).toBe(64 * MiB);
    expect(disk).toMatchObject({
      is_read_only: false,
      can_trim: true,
      can_zero: true,
      can_fast_zero: true,
      can_flush: true,
      can_fua: true,
      can_multi_conn: true,
      can_cache: true,
      block_size_minimum: 512,
      block_size_preferred: 4096,
      block_size_maximum: 32 * MiB,
    });
    expect(disk.contexts).toEqual(['base:allocation']);
  });

  it('lists every export with its description and contexts, never a secret', async () => {
    const { stdout } = await tool('nbdinfo', ['--list', '--json', t.uri('')]);
    expect(stdout).not.toContain(SECRET);
    const info = JSON.parse(stdout) as { exports: NbdinfoExport[] };
    const byName = new Map(info.exports.map((e) => [e['export-name'], e]));
    expect([...byName.keys()].sort()).toEqual(['disk', 'holey', 'snap']);
    expect(byName.get('holey')?.contexts?.sort()).toEqual(['base:allocation', 'thinpool:delta:base']);
    expect(byName.get('holey')?.['export-size']).toBe(8 * MiB);
    expect(byName.get('snap')?.is_read_only).toBe(true);
    expect(byName.get('snap')?.can_trim).toBe(false);
  });

  it('lists exports to the kernel client tool (nbd-client -l)', async () => {
    const { stdout } = await tool('nbd-client', ['-l', '127.0.0.1', String(t.port)]);
    expect(stdout).toMatch(/^disk: test disk$/m);
    expect(stdout).toMatch(/^holey: a device with holes$/m);
    expect(stdout).not.toMatch(/vol-secret/);
  });

  it('maps base:allocation exactly as the device reports holes', async () => {
    const { stdout } = await tool('nbdinfo', ['--map', '--json', t.uri('holey')]);
    const expected = (await holey.blockStatus(0, 8 * MiB)).map((e) => ({
      offset: e.offset,
      length: e.length,
      type: e.hole ? 3 : 0,
    }));
    expect(parseMap(stdout)).toEqual(expected);
    expect(expected.map((e) => e.type)).toEqual([0, 3, 0, 3, 0]);
  });

  it('maps a custom thinpool:delta context through its provider', async () => {
    deltaCalls.length = 0;
    const { stdout } = await tool('nbdinfo', ['--map=thinpool:delta:base', '--json', t.uri('holey')]);
    expect(parseMap(stdout)).toEqual([
      { offset: 0, length: 1 * MiB, type: 0 },
      { offset: 1 * MiB, length: 1 * MiB, type: 1 },
      { offset: 2 * MiB, length: 3 * MiB, type: 0 },
      { offset: 5 * MiB, length: 0.5 * MiB, type: 1 },
      { offset: 5.5 * MiB, length: 2.5 * MiB, type: 0 },
    ]);
    expect(deltaCalls.length).toBeGreaterThan(0);
  });

  it('reads holes back as zeros (OFFSET_HOLE chunks) and data as written', async () => {
    // qemu's NBD client negotiates structured replies, so holes arrive as OFFSET_HOLE chunks.
    const { stdout } = await tool('qemu-io', [
      '-r',
      '-f',
      'raw',
      t.uri('holey'),
      '-c',
      'read -P 0x11 0 128k',
      '-c',
      'read -P 0 128k 128k',
      '-c',
      'read -P 0 2M 1M',
      '-c',
      'read -P 0x22 3M 64k',
    ]);
    expect(stdout).not.toMatch(/Pattern verification failed|error/i);
    expect(stdout.match(/^read /gm)).toHaveLength(4);
  });

  it('opens a secret export only with the right secret', async () => {
    const good = await tool('nbdinfo', ['--json', t.uri(`vol-secret/${SECRET}`)]);
    expect((JSON.parse(good.stdout) as { exports: NbdinfoExport[] }).exports[0]['export-size']).toBe(
      64 * MiB,
    );
    for (const name of ['vol-secret', 'vol-secret/wrong-secret-value', `vol-secret/${SECRET}x`]) {
      const attempt = tool('nbdinfo', ['--json', t.uri(name)]);
      await expect(attempt).rejects.toThrow(/server replied with error to opt_go/);
      await expect(attempt).rejects.not.toThrow(/export-size/);
    }
  });

  it('refuses an unknown export', async () => {
    await expect(tool('nbdinfo', [t.uri('nope')])).rejects.toThrow(/unknown|not available|no such/i);
  });
});
