// A device-set change records its intent in the catalogue before the pool commits. When that
// write fails (the catalogue's disk fails), nothing may change: the call fails with the cause,
// the metadata is untouched and clean, the pool goes on serving, and a reopen finds no trace.
import path from 'node:path';
import { Catalogue } from '../../src/thin/catalogue';
import { checkMetadata } from '../../src/thin/check';
import { Pool } from '../../src/thin/pool';
import { thinCheckBoth } from '../helpers/thin-oracle';
import { makeTempDir } from '../helpers/tmp';

const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

it.each(['create', 'snapshot', 'delete'] as const)(
  'a failed intent write during a %s changes nothing',
  async (op) => {
    const dir = path.join(tmp.dir, op);
    const pool = await Pool.create(dir, { dataSizeBytes: 2 ** 28 }, { commitIntervalMs: 0 });
    await pool.createThin(1, 8 * 2 ** 20, { name: 'one' });
    const data = Buffer.alloc(2 * 65536, 0x5a);
    await pool.device(1).write(0, data);
    await pool.flush();
    const before = pool.status().transactionId;

    const recordIntent = jest.spyOn(Catalogue.prototype, 'recordIntent').mockImplementation(() => {
      throw Object.assign(new Error('simulated write failure of the catalogue'), { code: 'EIO' });
    });
    try {
      const change =
        op === 'create'
          ? pool.createThin(2, 2 ** 20)
          : op === 'snapshot'
            ? pool.createSnap(2, 1)
            : pool.deleteDevice(1);
      await expect(change).rejects.toThrow('simulated write failure of the catalogue');
      expect(recordIntent).toHaveBeenCalledTimes(1);
    } finally {
      recordIntent.mockRestore();
    }
    const status = pool.status();
    expect(status.mode).toBe('read-write');
    expect(status.transactionId).toBe(before);
    expect(pool.listDevices().map((d) => d.id)).toEqual([1]);
    expect(pool.catalogue.intent).toBeUndefined();
    // I/O goes on: the failed change left nothing half done.
    const after = Buffer.concat([data.subarray(0, 65536), Buffer.alloc(65536, 0x33)]);
    await pool.device(1).write(65536, after.subarray(65536));
    await pool.flush();
    expect((await pool.device(1).read(0, after.length)).equals(after)).toBe(true);
    await pool.close();

    const metadata = path.join(dir, 'metadata');
    expect(checkMetadata(metadata).errors).toEqual([]);
    for (const r of await thinCheckBoth(metadata))
      expect({ version: r.version, code: r.code }).toEqual({ version: r.version, code: 0 });

    const reopened = await Pool.open(dir, { commitIntervalMs: 0 });
    try {
      const status = reopened.status();
      expect(status.mode).toBe('read-write');
      expect(status.needsCheck).toBe(false);
      expect(status.transactionId).toBe(before);
      expect(reopened.listDevices().map((d) => d.id)).toEqual([1]);
      expect(reopened.catalogue.intent).toBeUndefined();
      expect((await reopened.device(1).read(0, after.length)).equals(after)).toBe(true);
      // And the change goes through once the catalogue works.
      if (op !== 'delete') await reopened.createSnap(2, 1);
      else await reopened.deleteDevice(1);
    } finally {
      await reopened.close();
    }
    for (const r of await thinCheckBoth(metadata)) expect(r.code).toBe(0);
  },
);
