// The engine under a random workload of many devices, deep snapshot chains, writes, trims and
// deletes. Judged by: an in-memory content model after reopening; both thin_check versions;
// thin_ls, thin_delta and thin_dump -m agreeing with our own answers.
import path from 'node:path';
import { Pool } from '../../src/thin/pool';
import { checkMetadata } from '../../src/thin/check';
import { dumpDevices, dumpXml } from '../../src/thin/dump';
import { ThinMetadata } from '../../src/thin/metadata';
import { makeTempDir } from '../helpers/tmp';
import { normaliseXml, thinCheckBoth, thinDump } from '../helpers/thin-oracle';
import { runTool, thinTool } from '../helpers/tools';
import { seededRandom, testSeed } from '../helpers/random';
import { ContentModel, compareContent, randomData, randomRange } from '../helpers/thin-model';

const DEVICE_BYTES = 24 * 2 ** 20;
const seed = testSeed();
const rnd = seededRandom(seed);
const tmp = makeTempDir();
const dir = path.join(tmp.dir, 'pool');
const model = new ContentModel();
let pool: Pool;

afterAll(async () => {
  await pool?.close().catch(() => undefined);
  tmp.cleanup();
});

/** Our per-device mapped/exclusive/shared counts, computed from the mappings. */
function ourLs(metadata: string): Map<number, { mapped: number; exclusive: number; shared: number }> {
  const md = ThinMetadata.open(metadata, { readOnly: true });
  try {
    const devices = [...dumpDevices(md)];
    const users = new Map<number, number>();
    for (const d of devices)
      for (const [, m] of d.mappings) users.set(m.dataBlock, (users.get(m.dataBlock) ?? 0) + 1);
    const out = new Map<number, { mapped: number; exclusive: number; shared: number }>();
    for (const d of devices) {
      const exclusive = d.mappings.filter(([, m]) => users.get(m.dataBlock) === 1).length;
      out.set(d.id, {
        mapped: d.details.mappedBlocks,
        exclusive,
        shared: d.details.mappedBlocks - exclusive,
      });
    }
    return out;
  } finally {
    md.close();
  }
}

/** thin_delta's XML reduced to [kind, begin, length] runs of differences. */
function parseThinDelta(xml: string): [string, number, number][] {
  const out: [string, number, number][] = [];
  for (const m of xml.matchAll(/<(different|left_only|right_only) begin="(\d+)" length="(\d+)"\/>/g)) {
    const [kind, begin, length] = [m[1], Number(m[2]), Number(m[3])];
    const last = out[out.length - 1];
    if (last && last[0] === kind && last[1] + last[2] === begin) last[2] += length;
    else out.push([kind, begin, length]);
  }
  return out;
}

describe(`engine under a random workload (seed ${seed})`, () => {
  const chains: number[][] = [];

  beforeAll(async () => {
    pool = await Pool.create(dir, { dataSizeBytes: 4 * 2 ** 30 }, { commitIntervalMs: 0 });
    let next = 0;
    // Three origins, each with a snapshot chain at least 10 deep, plus side snapshots.
    for (let c = 0; c < 3; c++) {
      const origin = next++;
      await pool.createThin(origin, DEVICE_BYTES);
      model.create(origin, DEVICE_BYTES);
      chains.push([origin]);
    }
    for (let step = 0; step < 1200; step++) {
      const live = [...model.devices.keys()];
      const id = rnd.pick(live);
      const r = rnd.next();
      if (step % 30 === 29) {
        // Extend the chains in turn from their tips, and every fourth time branch off any device
        // instead: each chain ends at least 11 long whatever the seed (it was random before).
        const k = Math.floor(step / 30);
        const chain = chains[k % chains.length];
        const origin = k % 4 === 3 ? id : chain[chain.length - 1];
        const snap = next++;
        await pool.createSnap(snap, origin);
        model.snap(snap, origin);
        if (origin === chain[chain.length - 1]) chain.push(snap);
      } else if (r < 0.65) {
        const { offset, length } = randomRange(rnd, DEVICE_BYTES);
        const data = randomData(length);
        await pool.device(id).write(offset, data);
        model.write(id, offset, data);
      } else if (r < 0.8) {
        const { offset, length } = randomRange(rnd, DEVICE_BYTES, 1024 * 1024);
        await pool.device(id).trim(offset, length);
        model.zero(id, offset, length);
      } else if (r < 0.9) {
        const { offset, length } = randomRange(rnd, DEVICE_BYTES);
        await pool.device(id).writeZeroes(offset, length, { noHole: rnd.next() < 0.5 });
        model.zero(id, offset, length);
      } else if (r < 0.93 && live.length > 22 && !chains.some((c) => c.includes(id))) {
        await pool.deleteDevice(id);
        model.delete(id);
      } else {
        const { offset, length } = randomRange(rnd, DEVICE_BYTES);
        expect(
          (await pool.device(id).read(offset, length)).equals(
            model.devices.get(id)!.subarray(offset, offset + length),
          ),
        ).toBe(true);
      }
      if (step % 100 === 99) await pool.commit();
    }
    await pool.close();
    pool = await Pool.open(dir, { commitIntervalMs: 0 });
  }, 600_000);

  it('really built ≥ 20 devices and chains ≥ 10 deep', () => {
    expect(model.devices.size).toBeGreaterThanOrEqual(20);
    expect(Math.max(...chains.map((c) => c.length))).toBeGreaterThanOrEqual(11);
  });

  it('every device reads back exactly as the model after reopening', async () => {
    expect(await compareContent(pool, model)).toBeUndefined();
  });

  it('passes both thin_check versions and our checker', async () => {
    await pool.commit();
    const metadata = path.join(dir, 'metadata');
    for (const r of await thinCheckBoth(metadata)) expect(r).toMatchObject({ code: 0 });
    expect(checkMetadata(metadata).errors).toEqual([]);
  });

  it('agrees with thin_ls on mapped, exclusive and shared blocks', async () => {
    await pool.commit();
    const metadata = path.join(dir, 'metadata');
    const r = await runTool(thinTool('thin_ls', '0.9'), [
      '--no-headers',
      '-o',
      'DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS',
      metadata,
    ]);
    expect(r.code).toBe(0);
    const theirs = new Map<number, { mapped: number; exclusive: number; shared: number }>();
    for (const line of r.stdout.trim().split('\n')) {
      const [dev, mapped, exclusive, shared] = line.trim().split(/\s+/).map(Number);
      theirs.set(dev, { mapped, exclusive, shared });
    }
    expect(theirs).toEqual(ourLs(metadata));
    expect(theirs.size).toBe(model.devices.size);
  });

  it('agrees with thin_delta on random pairs of devices', async () => {
    await pool.commit();
    const metadata = path.join(dir, 'metadata');
    const ids = [...model.devices.keys()];
    const pairs: [number, number][] = chains
      .filter((c) => c.length > 1)
      .map((c) => [c[c.length - 2], c[c.length - 1]]);
    for (let i = 0; i < 8; i++) pairs.push([rnd.pick(ids), rnd.pick(ids)]);
    let differing = 0;
    for (const [a, b] of pairs) {
      if (!model.devices.has(a) || !model.devices.has(b)) continue;
      const r = await runTool(thinTool('thin_delta', '0.9'), [
        '--thin1',
        String(a),
        '--thin2',
        String(b),
        metadata,
      ]);
      expect(r.code).toBe(0);
      const ours = (await pool.delta(a, b)).map((d) => [d.kind, d.begin, d.length]);
      expect({ a, b, ranges: ours }).toEqual({ a, b, ranges: parseThinDelta(r.stdout) });
      if (ours.length) differing++;
    }
    expect(differing).toBeGreaterThan(0);
  });

  it('freezes a metadata snapshot that thin_dump -m shows exactly while writes go on', async () => {
    const metadata = path.join(dir, 'metadata');
    await pool.reserveMetadataSnap();
    await expect(pool.reserveMetadataSnap()).rejects.toThrow(/already held/);
    const md = ThinMetadata.open(metadata, { readOnly: true });
    const frozen = dumpXml(md, md.heldSuperblock()!);
    md.close();
    const id = [...model.devices.keys()][0];
    const before = await pool.allocated(id, { useMetadataSnap: true });
    for (let i = 0; i < 50; i++) {
      const { offset, length } = randomRange(rnd, DEVICE_BYTES);
      await pool.device(id).write(offset, randomData(length));
      model.write(id, offset, await pool.device(id).read(offset, length));
    }
    await pool.commit();
    expect(await pool.allocated(id, { useMetadataSnap: true })).toEqual(before);
    expect(normaliseXml(await thinDump(metadata, ['-m']))).toBe(normaliseXml(frozen));
    for (const r of await thinCheckBoth(metadata)) expect(r).toMatchObject({ code: 0 });
    await pool.releaseMetadataSnap();
    for (const r of await thinCheckBoth(metadata)) expect(r).toMatchObject({ code: 0 });
    expect(checkMetadata(metadata).errors).toEqual([]);
  });
});
