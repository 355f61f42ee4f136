// The catalogue store: label lookups and pages, the upgrade from the JSON catalogue of earlier
// releases, entries whose device is gone, and metadata changed behind the catalogue's back.
import fs from 'node:fs';
import path from 'node:path';
import { ADOPTED_LABEL, Catalogue, CatalogueError } from '../../src/thin/catalogue';
import { ThinMetadata } from '../../src/thin/metadata';
import { Pool } from '../../src/thin/pool';
import { poolPaths } from '../../src/thin/pool-files';
import { makeTempDir } from '../helpers/tmp';
import { thinCheckBoth } from '../helpers/thin-oracle';

const MiB = 2 ** 20;
const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

let n = 0;
async function freshPool(): Promise<{ dir: string; pool: Pool }> {
  const dir = path.join(tmp.dir, `pool-${n++}`);
  const pool = await Pool.create(dir, { dataSizeBytes: 256 * MiB }, { commitIntervalMs: 0 });
  return { dir, pool };
}

describe('label index', () => {
  it('finds devices by label in id order, a page at a time, and follows label changes', async () => {
    const { pool } = await freshPool();
    try {
      for (let i = 0; i < 12; i++)
        await pool.createThin(i, MiB, { kind: i % 3 === 0 ? 'volume' : 'snapshot', name: `d${i}` });
      const c = pool.catalogue;
      expect(c.withLabel('kind', 'volume')).toEqual([0, 3, 6, 9]);
      expect(c.withLabel('kind', 'snapshot', { after: 4, limit: 3 })).toEqual([5, 7, 8]);
      expect(c.withLabel('name', 'd7')).toEqual([7]);
      expect(c.ids({ after: 9 })).toEqual([10, 11]);
      expect(pool.listDevices({ label: ['kind', 'volume'], after: 3, limit: 2 }).map((d) => d.id)).toEqual([
        6, 9,
      ]);

      await pool.setLabels(7, { kind: 'volume', name: 'renamed' });
      expect(c.withLabel('name', 'd7')).toEqual([]);
      expect(c.withLabel('name', 'renamed')).toEqual([7]);
      expect(c.withLabel('kind', 'volume')).toEqual([0, 3, 6, 7, 9]);
      await pool.deleteDevice(3);
      expect(c.withLabel('kind', 'volume')).toEqual([0, 6, 7, 9]);
      expect(c.withLabel('name', 'd3')).toEqual([]);
      expect(() => c.withLabel('name', 'x'.repeat(2000))).toThrow(CatalogueError);
    } finally {
      await pool.close();
    }
  });

  it('keeps pages full while changes wait for their batch', async () => {
    const { pool } = await freshPool();
    try {
      for (let i = 0; i < 10; i++) await pool.createThin(i, MiB, { kind: 'volume' });
      pool.catalogue.flush();
      // In memory only, until the next batch: three deletes and a new device.
      for (const id of [1, 2, 4]) await pool.deleteDevice(id);
      await pool.createThin(20, MiB, { kind: 'volume' });
      const pages = (get: (after?: number) => number[]) => {
        const out: number[][] = [];
        for (let after: number | undefined, page = get(); page.length; page = get(after)) {
          out.push(page);
          after = page[page.length - 1];
        }
        return out;
      };
      const expected = [
        [0, 3, 5],
        [6, 7, 8],
        [9, 20],
      ];
      expect(pages((after) => pool.catalogue.ids({ after, limit: 3 }))).toEqual(expected);
      expect(pages((after) => pool.catalogue.withLabel('kind', 'volume', { after, limit: 3 }))).toEqual(
        expected,
      );
      pool.catalogue.flush();
      expect(pages((after) => pool.catalogue.ids({ after, limit: 3 }))).toEqual(expected);
    } finally {
      await pool.close();
    }
  });

  it('keeps the index and counts across reopening', async () => {
    const { dir, pool } = await freshPool();
    await pool.createThin(1, MiB, { kind: 'volume' });
    await pool.createSnap(2, 1, { labels: { kind: 'snapshot' } });
    await pool.createSnap(3, 1, { labels: { kind: 'snapshot' } });
    await pool.close();
    const again = await Pool.open(dir, { commitIntervalMs: 0 });
    try {
      expect(again.catalogue.withLabel('kind', 'snapshot')).toEqual([2, 3]);
      expect(again.status().catalogue).toEqual({ entries: 3, snapshots: 2, adopted: [], missing: [] });
      expect(again.nextDeviceId()).toBe(0);
    } finally {
      await again.close();
    }
  });
});

describe('upgrade from catalogue.json', () => {
  // What the first release wrote: one JSON file, intents applied only once complete.
  function writeLegacy(dir: string, pool: Pool, intent?: object): void {
    const devices = Object.fromEntries(
      pool
        .listDevices()
        .map(({ id, sizeBytes, origin, createdAt, labels }) => [
          String(id),
          { sizeBytes, ...(origin !== undefined ? { origin } : {}), createdAt, labels },
        ]),
    );
    const legacy = { version: 1, transactionId: pool.status().transactionId, devices, intent };
    fs.writeFileSync(poolPaths(dir).legacyCatalogue, JSON.stringify(legacy));
  }

  it('moves every entry into the store once and removes the JSON file', async () => {
    const { dir, pool } = await freshPool();
    await pool.createThin(4, 3 * MiB, { name: 'four' });
    await pool.createSnap(9, 4, { labels: { name: 'nine' } });
    const before = pool.listDevices();
    writeLegacy(dir, pool);
    await pool.close();
    fs.rmSync(poolPaths(dir).catalogue, { recursive: true });

    const upgraded = await Pool.open(dir, { commitIntervalMs: 0 });
    try {
      expect(upgraded.listDevices()).toEqual(before);
      expect(upgraded.status().catalogue).toMatchObject({ adopted: [], missing: [] });
      expect(upgraded.catalogue.withLabel('name', 'nine')).toEqual([9]);
      expect(fs.existsSync(poolPaths(dir).legacyCatalogue)).toBe(false);
    } finally {
      await upgraded.close();
    }
  });

  it('rolls a pending JSON intent forward when the pool committed it', async () => {
    const { dir, pool } = await freshPool();
    await pool.createThin(1, MiB, { name: 'one' });
    const tx = pool.status().transactionId;
    await pool.createSnap(2, 1, { labels: { name: 'two' } });
    const entry = pool.catalogue.get(2)!;
    // As if the first release crashed after the pool commit of the snapshot.
    writeLegacy(dir, pool, { op: 'create', id: 2, entry, fromTransactionId: tx, toTransactionId: tx + 1 });
    const legacy = JSON.parse(fs.readFileSync(poolPaths(dir).legacyCatalogue, 'utf8'));
    delete legacy.devices['2'];
    legacy.transactionId = tx;
    fs.writeFileSync(poolPaths(dir).legacyCatalogue, JSON.stringify(legacy));
    await pool.close();
    fs.rmSync(poolPaths(dir).catalogue, { recursive: true });

    const upgraded = await Pool.open(dir, { commitIntervalMs: 0 });
    try {
      expect(upgraded.listDevices().map((d) => [d.id, d.labels.name])).toEqual([
        [1, 'one'],
        [2, 'two'],
      ]);
      expect(upgraded.catalogue.intent).toBeUndefined();
      expect(upgraded.catalogue.transactionId).toBe(tx + 1);
    } finally {
      await upgraded.close();
    }
  });

  it('prefers an upgraded store over a JSON file a crash left beside it', async () => {
    const { dir, pool } = await freshPool();
    await pool.createThin(1, MiB, { name: 'kept' });
    // A stale JSON file naming a device the store does not have.
    fs.writeFileSync(
      poolPaths(dir).legacyCatalogue,
      JSON.stringify({ version: 1, transactionId: 0, devices: {} }),
    );
    await pool.close();
    const again = await Pool.open(dir, { commitIntervalMs: 0 });
    try {
      expect(again.listDevices().map((d) => d.labels.name)).toEqual(['kept']);
      expect(fs.existsSync(poolPaths(dir).legacyCatalogue)).toBe(false);
    } finally {
      await again.close();
    }
  });

  it('reads a JSON catalogue without upgrading it when opened read-only', async () => {
    const { dir, pool } = await freshPool();
    await pool.createThin(1, 5 * MiB, { name: 'legacy' });
    writeLegacy(dir, pool);
    await pool.close();
    fs.rmSync(poolPaths(dir).catalogue, { recursive: true });
    const ro = await Pool.open(dir, { readOnly: true });
    try {
      expect(ro.listDevices().map((d) => [d.id, d.sizeBytes, d.labels.name])).toEqual([
        [1, 5 * MiB, 'legacy'],
      ]);
    } finally {
      await ro.close();
    }
    expect(fs.existsSync(poolPaths(dir).catalogue)).toBe(false);
    expect(fs.existsSync(poolPaths(dir).legacyCatalogue)).toBe(true);
  });
});

describe('catalogue and metadata that disagree', () => {
  it('reports an entry whose device is gone, keeps its id out of use, and drops it on delete', async () => {
    const { dir, pool } = await freshPool();
    await pool.createThin(0, MiB, { name: 'zero' });
    await pool.createThin(1, MiB, { name: 'one' });
    await pool.close();
    // Another tool removes device 0 from the metadata.
    const md = ThinMetadata.open(poolPaths(dir).metadata);
    md.deleteDevice(0);
    md.commit();
    md.close();

    const again = await Pool.open(dir, { commitIntervalMs: 0 });
    try {
      expect(again.status().catalogue).toMatchObject({ missing: [0], adopted: [] });
      expect(again.catalogue.get(0)?.labels.name).toBe('zero');
      expect(again.listDevices().map((d) => d.id)).toEqual([1]);
      expect(again.nextDeviceId()).toBe(2);
      await again.deleteDevice(0);
      expect(again.catalogue.get(0)).toBeUndefined();
      expect(again.nextDeviceId()).toBe(0);
    } finally {
      await again.close();
    }
    const third = await Pool.open(dir, { commitIntervalMs: 0 });
    expect(third.status().catalogue).toMatchObject({ missing: [], adopted: [] });
    await third.close();
  });

  it('adopts a device another tool added, once, and keeps it snapshottable', async () => {
    const { dir, pool } = await freshPool();
    await pool.createThin(1, MiB, { name: 'ours' });
    await pool.close();
    const md = ThinMetadata.open(poolPaths(dir).metadata);
    md.createThin(7);
    md.insertMapping(7, 40, md.dataSm.counts.allocate()!);
    md.setTransactionId(md.sb.transactionId, md.sb.transactionId + 5);
    md.commit();
    md.close();

    const again = await Pool.open(dir, { commitIntervalMs: 0 });
    try {
      expect(again.status().catalogue).toMatchObject({ adopted: [7], missing: [] });
      const adopted = again.deviceInfo(7);
      expect(adopted.labels).toEqual({ [ADOPTED_LABEL]: 'true' });
      expect(adopted.sizeBytes).toBe(41 * again.blockBytes);
      expect(again.catalogue.transactionId).toBe(again.status().transactionId);
      const snap = await again.createSnap('auto', 7);
      expect(snap.origin).toBe(7);
    } finally {
      await again.close();
    }
    const third = await Pool.open(dir, { commitIntervalMs: 0 });
    expect(third.status().catalogue).toMatchObject({ adopted: [], missing: [] });
    await third.close();
    for (const r of await thinCheckBoth(poolPaths(dir).metadata)) expect(r).toMatchObject({ code: 0 });
  });

  it('refuses a directory that is not a catalogue', async () => {
    const dir = path.join(tmp.dir, 'not-a-catalogue');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'data.mdb'), 'garbage'.repeat(1000));
    expect(() => Catalogue.open(dir, path.join(tmp.dir, 'none.json'))).toThrow(CatalogueError);
  });
});
