import type { BlockDevice } from '../../src/block-device';
import { ExportRegistry } from '../../src/nbd';
import { ByteQueue } from '../../src/nbd/byte-queue';
import { HoleyDevice } from './helpers';

const device: BlockDevice = new HoleyDevice(1024 * 1024);
const anonymous = { tls: false, certNames: [] };

describe('ExportRegistry', () => {
  const registry = new ExportRegistry();
  registry.add({ name: 'open-vol', device, access: { kind: 'open' } });
  registry.add({ name: 'ns/vol', device, access: { kind: 'secret', secret: 's3cret-value' } });
  registry.add({ name: 'pinned', device, access: { kind: 'open' }, clientCertNames: ['node-a'] });

  it('finds open exports by exact name only', () => {
    expect(registry.lookup('open-vol', anonymous).kind).toBe('ok');
    expect(registry.lookup('open-vol/extra', anonymous).kind).toBe('unknown');
    expect(registry.lookup('OPEN-VOL', anonymous).kind).toBe('unknown');
    expect(registry.lookup('', anonymous).kind).toBe('unknown');
  });

  it('needs the right secret after the last slash; names may contain slashes', () => {
    expect(registry.lookup('ns/vol/s3cret-value', anonymous)).toMatchObject({ kind: 'ok' });
    expect(registry.lookup('ns/vol', anonymous).kind).toBe('denied');
    expect(registry.lookup('ns/vol/s3cret-valuE', anonymous).kind).toBe('denied');
    expect(registry.lookup('ns/vol/', anonymous).kind).toBe('denied');
    expect(registry.lookup('ns/s3cret-value', anonymous).kind).toBe('unknown');
  });

  it('restricts pinned exports to verified client certificates with a listed name', () => {
    expect(registry.lookup('pinned', anonymous).kind).toBe('denied');
    expect(registry.lookup('pinned', { tls: true, certNames: ['node-b'] }).kind).toBe('denied');
    expect(registry.lookup('pinned', { tls: true, certNames: ['node-b', 'node-a'] }).kind).toBe('ok');
  });

  it('lists only what a client could open, never secret exports', () => {
    expect(registry.listVisible(anonymous).map((d) => d.name)).toEqual(['open-vol']);
    expect(registry.listVisible({ tls: true, certNames: ['node-a'] }).map((d) => d.name)).toEqual([
      'open-vol',
      'pinned',
    ]);
  });

  it('serves a default export for the empty name when configured', () => {
    const withDefault = new ExportRegistry();
    withDefault.add({ name: 'main', device, access: { kind: 'open' } });
    withDefault.defaultExportName = 'main';
    expect(withDefault.lookup('', anonymous)).toMatchObject({ kind: 'ok' });
  });

  it('rejects invalid definitions', () => {
    const r = new ExportRegistry();
    expect(() => r.add({ name: '', device, access: { kind: 'open' } })).toThrow(RangeError);
    expect(() => r.add({ name: 'a', device, access: { kind: 'secret', secret: 'short' } })).toThrow(/secret/);
    expect(() => r.add({ name: 'a', device, access: { kind: 'secret', secret: 'has/slash!!' } })).toThrow(
      /secret/,
    );
    const provider = async (_o: number, length: number) => [{ length, flags: 0 }];
    expect(() =>
      r.add({ name: 'a', device, access: { kind: 'open' }, metaContexts: { nocolon: provider } }),
    ).toThrow(/namespace/);
    expect(() =>
      r.add({ name: 'a', device, access: { kind: 'open' }, metaContexts: { 'base:allocation': provider } }),
    ).toThrow(/namespace/);
    r.add({ name: 'a', device, access: { kind: 'open' } });
    expect(() => r.add({ name: 'a', device, access: { kind: 'open' } })).toThrow(/already exists/);
  });
});

describe('ByteQueue', () => {
  it('reads across chunk boundaries and hands out views when it can', async () => {
    const q = new ByteQueue();
    q.push(Buffer.from([1, 2, 3]));
    q.push(Buffer.from([4, 5]));
    q.push(Buffer.from([6, 7, 8, 9]));
    expect([...(await q.read(4))]).toEqual([1, 2, 3, 4]);
    q.peek(3);
    expect([...q.frame.subarray(q.frameOffset, q.frameOffset + 3)]).toEqual([5, 6, 7]);
    expect(q.contiguous(1)).toBe(true);
    expect(q.contiguous(2)).toBe(false);
    const target = Buffer.alloc(4);
    expect(q.drainInto(target, 1, 3)).toBe(3);
    expect([...target]).toEqual([0, 5, 6, 7]);
    expect(q.skip(10)).toBe(2);
    expect(q.length).toBe(0);
  });

  it('waits for data and fails pending reads when the socket closes', async () => {
    const q = new ByteQueue();
    const pending = q.read(2);
    q.push(Buffer.from([1]));
    q.push(Buffer.from([2, 3]));
    expect([...(await pending)]).toEqual([1, 2]);
    const never = q.read(5);
    q.fail(new Error('gone'));
    await expect(never).rejects.toThrow('gone');
    await expect(q.read(1)).resolves.toEqual(Buffer.from([3]));
    await expect(q.read(2)).rejects.toThrow('gone');
  });
});
