// Protocol behaviour checked frame by frame with an in-test client: option haggling,
// reply shapes (simple, structured, extended), errors, ordering and backpressure.
import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../../src/block-device';
import * as P from '../../src/nbd/protocol';
import { HoleyDevice, startTestServer, type TestServer } from './helpers';
import { parseBlockStatus, RawClient } from './raw-client';

const MiB = 1024 * 1024;

/** Wraps a device so reads of one offset take `delayMs` (to prove replies come out of order). */
function slowAt(device: BlockDevice, slowOffset: number, delayMs: number): BlockDevice {
  return new Proxy(device, {
    get(target, key, receiver) {
      if (key === 'readInto') return undefined; // force the plain read path below
      if (key === 'read') {
        return async (offset: number, length: number) => {
          if (offset === slowOffset) await new Promise((resolve) => setTimeout(resolve, delayMs));
          return target.read(offset, length);
        };
      }
      const value = Reflect.get(target, key, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

describe('NBD protocol details', () => {
  let t: TestServer;
  const holey = new HoleyDevice(4 * MiB);

  beforeAll(async () => {
    await holey.write(MiB, Buffer.alloc(64 * 1024, 0x44));
    t = await startTestServer({
      sizeBytes: 16 * MiB,
      extraExports: (device) => [
        { name: 'ro', device, readOnly: true, access: { kind: 'open' } },
        { name: 'holey', device: holey, access: { kind: 'open' }, fastZero: true },
        { name: 'slow', device: slowAt(device, 0, 300), access: { kind: 'open' } },
        {
          name: 'ctx',
          device: holey,
          access: { kind: 'open' },
          metaContexts: {
            'thinpool:delta:a': async (_offset, length) => [{ length, flags: 1 }],
            'thinpool:delta:b': async (_offset, length) => [{ length, flags: 0 }],
          },
        },
      ],
    });
  });
  afterAll(() => t.close());

  const target = (): { port: number } => ({ port: t.port });

  describe('handshake', () => {
    it('greets with fixed newstyle + no zeroes and drops unknown client flags', async () => {
      const client = await RawClient.connect(target());
      const greeting = await client.queue.read(18);
      expect(greeting.toString('latin1', 0, 16)).toBe('NBDMAGICIHAVEOPT');
      expect(greeting.readUInt16BE(16)).toBe(3);
      client.write(Buffer.from([0, 0, 0, 7]));
      await client.closed;
    });

    it('answers unknown options with ERR_UNSUP and keeps going', async () => {
      const client = await RawClient.open(target());
      const [unknown] = await client.option(4242, Buffer.from('ignored payload'));
      expect(unknown.type).toBe(P.NBD_REP_ERR_UNSUP);
      const [peek] = await client.option(P.NBD_OPT_PEEK_EXPORT);
      expect(peek.type).toBe(P.NBD_REP_ERR_UNSUP);
      const list = await client.option(P.NBD_OPT_LIST);
      expect(list.filter((r) => r.type === P.NBD_REP_SERVER).length).toBe(5);
      const [abort] = await client.option(P.NBD_OPT_ABORT);
      expect(abort.type).toBe(P.NBD_REP_ACK);
      await client.closed;
    });

    it('rejects malformed option data with ERR_INVALID', async () => {
      const client = await RawClient.open(target());
      expect((await client.option(P.NBD_OPT_LIST, Buffer.from('x')))[0].type).toBe(P.NBD_REP_ERR_INVALID);
      const badGo = RawClient.infoRequest('disk', [1]);
      badGo.writeUInt32BE(9999, 0); // name length overruns the option
      expect((await client.option(P.NBD_OPT_GO, badGo)).pop()?.type).toBe(P.NBD_REP_ERR_INVALID);
      expect((await client.option(P.NBD_OPT_STRUCTURED_REPLY, Buffer.from('x')))[0].type).toBe(
        P.NBD_REP_ERR_INVALID,
      );
      // Meta contexts before structured replies.
      const meta = RawClient.metaRequest('disk', ['base:allocation']);
      expect((await client.option(P.NBD_OPT_SET_META_CONTEXT, meta)).pop()?.type).toBe(P.NBD_REP_ERR_INVALID);
      expect((await client.option(P.NBD_OPT_STRUCTURED_REPLY))[0].type).toBe(P.NBD_REP_ACK);
      expect((await client.option(P.NBD_OPT_STRUCTURED_REPLY))[0].type).toBe(P.NBD_REP_ERR_INVALID);
      expect((await client.option(P.NBD_OPT_EXTENDED_HEADERS))[0].type).toBe(P.NBD_REP_ACK);
      expect((await client.option(P.NBD_OPT_STRUCTURED_REPLY))[0].type).toBe(P.NBD_REP_ERR_EXT_HEADER_REQD);
      expect((await client.option(P.NBD_OPT_STARTTLS))[0].type).toBe(P.NBD_REP_ERR_UNSUP);
      client.close();
    });

    it('INFO returns export, name, description and block size; GO agrees', async () => {
      const client = await RawClient.open(target());
      const request = RawClient.infoRequest('disk', [
        P.NBD_INFO_NAME,
        P.NBD_INFO_DESCRIPTION,
        P.NBD_INFO_BLOCK_SIZE,
      ]);
      const info = await client.option(P.NBD_OPT_INFO, request);
      expect(info.pop()?.type).toBe(P.NBD_REP_ACK);
      const byType = new Map(info.map((r) => [r.data.readUInt16BE(0), r.data]));
      expect(byType.get(P.NBD_INFO_NAME)?.toString('utf8', 2)).toBe('disk');
      expect(byType.get(P.NBD_INFO_DESCRIPTION)?.toString('utf8', 2)).toBe('test disk');
      const block = byType.get(P.NBD_INFO_BLOCK_SIZE) as Buffer;
      expect([block.readUInt32BE(2), block.readUInt32BE(6), block.readUInt32BE(10)]).toEqual([
        512,
        4096,
        32 * MiB,
      ]);
      const flags = (byType.get(P.NBD_INFO_EXPORT) as Buffer).readUInt16BE(10);
      const go = await client.go('disk');
      expect(go.flags).toBe(flags);
      expect(go.size).toBe(16 * MiB);
      expect(go.flags & P.NBD_FLAG_SEND_DF).toBe(0); // no structured replies negotiated
      client.disconnect();
      await client.closed;
    });

    it('lists meta contexts with namespace wildcards and selects exact names only', async () => {
      const client = await RawClient.open(target());
      await client.option(P.NBD_OPT_STRUCTURED_REPLY);
      const names = async (option: number, queries: string[]): Promise<string[]> =>
        (await client.option(option, RawClient.metaRequest('ctx', queries)))
          .filter((r) => r.type === P.NBD_REP_META_CONTEXT)
          .map((r) => r.data.toString('utf8', 4))
          .sort();
      expect(await names(P.NBD_OPT_LIST_META_CONTEXT, [])).toEqual([
        'base:allocation',
        'thinpool:delta:a',
        'thinpool:delta:b',
      ]);
      expect(await names(P.NBD_OPT_LIST_META_CONTEXT, ['thinpool:'])).toEqual([
        'thinpool:delta:a',
        'thinpool:delta:b',
      ]);
      expect(await names(P.NBD_OPT_LIST_META_CONTEXT, ['base:'])).toEqual(['base:allocation']);
      expect(await names(P.NBD_OPT_SET_META_CONTEXT, ['thinpool:', 'qemu:dirty-bitmap:x'])).toEqual([]);
      expect(await names(P.NBD_OPT_SET_META_CONTEXT, ['thinpool:delta:b', 'base:allocation'])).toEqual([
        'base:allocation',
        'thinpool:delta:b',
      ]);
      const unknown = await client.option(
        P.NBD_OPT_SET_META_CONTEXT,
        RawClient.metaRequest('nope', ['base:allocation']),
      );
      expect(unknown.pop()?.type).toBe(P.NBD_REP_ERR_UNKNOWN);
      client.close();
    });
  });

  describe('transmission', () => {
    it('answers a fast request before a slow one sent earlier (out of order)', async () => {
      const client = await RawClient.open(target());
      await client.go('slow', { structured: true });
      const order: string[] = [];
      const slow = client.read(0, 4096).then(() => order.push('slow'));
      const fast = client.read(MiB, 4096).then(() => order.push('fast'));
      await Promise.all([slow, fast]);
      expect(order).toEqual(['fast', 'slow']);
      client.close();
    });

    it('validates ranges, alignment, flags and commands with the spec errors (simple replies)', async () => {
      const client = await RawClient.open(target());
      await client.go('disk');
      const size = 16 * MiB;
      expect((await client.read(size - 4096, 8192)).error).toBe(P.NBD_EINVAL);
      expect((await client.writeData(size - 512, Buffer.alloc(1024))).error).toBe(P.NBD_ENOSPC);
      expect((await client.request(P.NBD_CMD_WRITE_ZEROES, size, 512)).error).toBe(P.NBD_ENOSPC);
      expect((await client.request(P.NBD_CMD_TRIM, size, 512)).error).toBe(P.NBD_EINVAL);
      expect((await client.read(100, 512)).error).toBe(P.NBD_EINVAL);
      expect((await client.read(2 ** 60, 512)).error).toBe(P.NBD_EINVAL);
      expect((await client.read(0, 4096, P.NBD_CMD_FLAG_REQ_ONE)).error).toBe(P.NBD_EINVAL);
      expect((await client.read(0, 4096, P.NBD_CMD_FLAG_DF)).error).toBe(P.NBD_EINVAL); // DF needs structured
      expect((await client.request(P.NBD_CMD_FLUSH, 512, 0)).error).toBe(P.NBD_EINVAL);
      expect((await client.request(P.NBD_CMD_RESIZE, 0, 0)).error).toBe(P.NBD_EINVAL);
      expect((await client.request(77, 0, 0)).error).toBe(P.NBD_EINVAL);
      expect((await client.request(P.NBD_CMD_BLOCK_STATUS, 0, 4096)).error).toBe(P.NBD_EINVAL);
      expect((await client.request(P.NBD_CMD_CACHE, 0, 4096)).error).toBe(0);
      expect((await client.read(0, 33 * MiB)).error).toBe(P.NBD_EINVAL);
      // Still healthy after all that.
      const data = randomBytes(8192);
      expect((await client.writeData(4096, data, P.NBD_CMD_FLAG_FUA)).error).toBe(0);
      expect((await client.request(P.NBD_CMD_FLUSH, 0, 0)).error).toBe(0);
      expect((await client.read(4096, 8192)).data?.equals(data)).toBe(true);
      client.disconnect();
      await client.closed;
    });

    it('refuses writes, trims and zeroes on a read-only export with EPERM', async () => {
      const client = await RawClient.open(target());
      const { flags } = await client.go('ro', { structured: true });
      expect(flags & P.NBD_FLAG_READ_ONLY).toBeTruthy();
      expect(flags & P.NBD_FLAG_SEND_TRIM).toBe(0);
      const before = await t.device.read(0, 4096);
      expect((await client.writeData(0, Buffer.alloc(4096, 1))).error).toBe(P.NBD_EPERM);
      expect((await client.request(P.NBD_CMD_TRIM, 0, 4096)).error).toBe(P.NBD_EPERM);
      expect((await client.request(P.NBD_CMD_WRITE_ZEROES, 0, 4096)).error).toBe(P.NBD_EPERM);
      expect((await t.device.read(0, 4096)).equals(before)).toBe(true);
      expect((await client.read(0, 4096)).error).toBe(0);
      client.close();
    });

    it('sends holes as OFFSET_HOLE chunks and honours DF with one data chunk', async () => {
      const client = await RawClient.open(target());
      await client.go('holey', { structured: true });
      const reply = await client.read(MiB - 64 * 1024, 192 * 1024);
      expect(reply.chunks.map((c) => c.type)).toEqual([
        P.NBD_REPLY_TYPE_OFFSET_HOLE,
        P.NBD_REPLY_TYPE_OFFSET_DATA,
        P.NBD_REPLY_TYPE_OFFSET_HOLE,
      ]);
      expect(reply.chunks.map((c) => c.flags)).toEqual([0, 0, P.NBD_REPLY_FLAG_DONE]);
      const expected = Buffer.alloc(192 * 1024);
      expected.fill(0x44, 64 * 1024, 128 * 1024);
      expect(reply.data?.equals(expected)).toBe(true);
      const df = await client.read(MiB - 64 * 1024, 64 * 1024 * 3, P.NBD_CMD_FLAG_DF);
      expect(df.chunks.map((c) => c.type)).toEqual([P.NBD_REPLY_TYPE_OFFSET_DATA]);
      expect(df.data?.equals(expected)).toBe(true);
      // A READ error is an error chunk, never a simple reply, once structured replies are on.
      const bad = await client.read(4 * MiB, 512);
      expect(bad.chunks[0].type).toBe(P.NBD_REPLY_TYPE_ERROR);
      expect(bad.error).toBe(P.NBD_EINVAL);
      client.close();
    });

    it('WRITE_ZEROES punches holes unless NO_HOLE; FAST_ZERO fails fast only when it must', async () => {
      const client = await RawClient.open(target());
      await client.go('holey', { structured: true });
      await client.writeData(2 * MiB, Buffer.alloc(128 * 1024, 9));
      expect(holey.allocated[32]).toBe(true);
      expect((await client.request(P.NBD_CMD_WRITE_ZEROES, 2 * MiB, 64 * 1024)).error).toBe(0);
      expect(holey.allocated[32]).toBe(false);
      const noHole = P.NBD_CMD_FLAG_NO_HOLE;
      expect(
        (await client.request(P.NBD_CMD_WRITE_ZEROES, 2 * MiB + 65536, 65536, { flags: noHole })).error,
      ).toBe(0);
      expect(holey.allocated[33]).toBe(true);
      expect((await client.read(2 * MiB, 128 * 1024)).data?.equals(Buffer.alloc(128 * 1024))).toBe(true);
      const fast = P.NBD_CMD_FLAG_FAST_ZERO;
      expect((await client.request(P.NBD_CMD_WRITE_ZEROES, 0, 65536, { flags: fast })).error).toBe(0);
      expect((await client.request(P.NBD_CMD_WRITE_ZEROES, 0, 65536, { flags: fast | noHole })).error).toBe(
        P.NBD_ENOTSUP,
      );
      client.close();

      // The file-backed export has no cheap zeroing: FAST_ZERO is refused, plain zeroing works.
      const file = await RawClient.open(target());
      await file.go('disk');
      expect((await file.request(P.NBD_CMD_WRITE_ZEROES, 0, 4096, { flags: fast })).error).toBe(
        P.NBD_ENOTSUP,
      );
      expect((await file.request(P.NBD_CMD_WRITE_ZEROES, 0, 4096)).error).toBe(0);
      file.close();
    });

    it('answers BLOCK_STATUS per selected context, with REQ_ONE and beyond-end checks', async () => {
      const client = await RawClient.open(target());
      const { contexts } = await client.go('ctx', {
        structured: true,
        contexts: ['base:allocation', 'thinpool:delta:a'],
      });
      const reply = await client.request(P.NBD_CMD_BLOCK_STATUS, 0, 2 * MiB);
      expect(reply.error).toBe(0);
      const byId = new Map(
        reply.chunks.map((c) => [parseBlockStatus(c).contextId, parseBlockStatus(c).extents]),
      );
      const base = byId.get(contexts.get('base:allocation') as number);
      expect(base?.[0]).toEqual([MiB, 3]);
      expect(base?.[1][1]).toBe(0);
      expect(byId.get(contexts.get('thinpool:delta:a') as number)).toEqual([[2 * MiB, 1]]);
      expect(reply.chunks[reply.chunks.length - 1].flags & P.NBD_REPLY_FLAG_DONE).toBeTruthy();
      const one = await client.request(P.NBD_CMD_BLOCK_STATUS, 0, 4 * MiB, { flags: P.NBD_CMD_FLAG_REQ_ONE });
      expect(one.chunks.every((c) => parseBlockStatus(c).extents.length === 1)).toBe(true);
      expect((await client.request(P.NBD_CMD_BLOCK_STATUS, 4 * MiB, 512)).error).toBe(P.NBD_EINVAL);
      client.close();
    });

    it('speaks extended headers: 64-bit lengths, PAYLOAD_LEN writes, BLOCK_STATUS_EXT', async () => {
      const client = await RawClient.open(target());
      const { size, contexts } = await client.go('holey', { extended: true, contexts: ['base:allocation'] });
      expect(size).toBe(4 * MiB);
      const data = randomBytes(64 * 1024);
      expect((await client.writeData(3 * MiB, data)).error).toBe(0);
      const read = await client.read(3 * MiB, 64 * 1024);
      expect(read.chunks.every((c) => c.offset === 3 * MiB)).toBe(true); // extended chunks echo the offset
      expect(read.data?.equals(data)).toBe(true);
      const status = await client.request(P.NBD_CMD_BLOCK_STATUS, 0, 4 * MiB);
      expect(status.chunks[0].type).toBe(P.NBD_REPLY_TYPE_BLOCK_STATUS_EXT);
      const { contextId, extents } = parseBlockStatus(status.chunks[0]);
      expect(contextId).toBe(contexts.get('base:allocation'));
      expect(extents.reduce((sum, [length]) => sum + length, 0)).toBe(4 * MiB);
      // Successful non-READ replies are NONE chunks, not simple replies.
      const flush = await client.request(P.NBD_CMD_FLUSH, 0, 0);
      expect(flush.chunks.map((c) => c.type)).toEqual([P.NBD_REPLY_TYPE_NONE]);
      // A 64-bit effect length beyond the export is refused, not truncated.
      expect((await client.request(P.NBD_CMD_TRIM, 0, 2 ** 40)).error).toBe(P.NBD_EINVAL);
      client.close();
    });

    it('finishes in-flight requests before closing on DISC', async () => {
      const client = await RawClient.open(target());
      await client.go('slow');
      const pending = client.read(0, 4096);
      client.disconnect();
      expect((await pending).error).toBe(0);
      await client.closed;
    });

    it('keeps many pipelined mixed requests on several connections consistent', async () => {
      const clients = await Promise.all(
        [0, 1, 2, 3].map(async (i) => {
          const c = await RawClient.open(target());
          await c.go('disk', { structured: i % 2 === 0, extended: i === 3 });
          return c;
        }),
      );
      // Each connection owns a 1 MiB region; sizes vary to cross chunk boundaries.
      await Promise.all(
        clients.map(async (client, i) => {
          const base = 8 * MiB + i * MiB;
          const model = Buffer.alloc(MiB);
          for (let round = 0; round < 20; round++) {
            const ops: Array<Promise<void>> = [];
            for (let k = 0; k < 16; k++) {
              // Four disjoint 256 KiB slots per batch, so concurrent writes never overlap.
              const length = 512 * (1 + ((round * 16 + k) % 256));
              const offset =
                (k % 4) * 256 * 1024 + 512 * ((round * 7919 + k * 104729) % (512 - length / 512));
              if ((round + k) % 3 === 0) {
                ops.push(
                  client.read(base + offset, length).then((reply) => {
                    expect(reply.error).toBe(0);
                    expect(reply.data?.length).toBe(length);
                  }),
                );
              } else if (k % 2 === 0) {
                const data = randomBytes(length);
                data.copy(model, offset);
                ops.push(client.writeData(base + offset, data).then((r) => expect(r.error).toBe(0)));
              } else {
                model.fill(0, offset, offset + length);
                ops.push(
                  client
                    .request(P.NBD_CMD_WRITE_ZEROES, base + offset, length)
                    .then((r) => expect(r.error).toBe(0)),
                );
              }
              // Writes to overlapping ranges in one batch would race; wait per batch.
              if (k % 4 === 3) await Promise.all(ops.splice(0));
            }
            await Promise.all(ops);
          }
          const final = await client.read(base, MiB);
          expect(final.data?.equals(model)).toBe(true);
        }),
      );
      for (const client of clients) client.close();
    });
  });
});
