// Randomized model test of the B-tree and both space maps, through the thin metadata that uses
// them: random inserts, removes, lookups, snapshots and deletes against an in-memory model,
// with commits every few hundred operations. After every commit the metadata is reopened from
// disk and compared with the model, and our checker recomputes every reference count; every
// tenth commit is also judged by thin_check 0.9 and 1.1.
import path from 'node:path';
import { ThinMetadata } from '../../src/thin/metadata';
import { checkMetadata } from '../../src/thin/check';
import { dumpDevices } from '../../src/thin/dump';
import { makeTempDir, sparseFile } from '../helpers/tmp';
import { thinCheckBoth } from '../helpers/thin-oracle';
import { seededRandom, testSeed } from '../helpers/random';
import { note } from '../helpers/notes';

const OPERATIONS = Number(process.env.MODEL_OPERATIONS ?? 100_000);
const COMMIT_EVERY = 300;
const VBLOCKS = 120_000;
const DATA_BLOCKS = 160_000;

type Model = Map<number, Map<number, number>>;

/** The first difference between what the metadata holds and the model, or undefined. */
function compareWithModel(md: ThinMetadata, model: Model, only?: Set<number>): string | undefined {
  const ids = md.deviceIds();
  if (ids.join() !== [...model.keys()].sort((a, b) => a - b).join()) return `devices ${ids.join()} vs model`;
  for (const dev of dumpDevices(md, md.sb, only)) {
    const want = model.get(dev.id)!;
    if (dev.mappings.length !== want.size)
      return `device ${dev.id}: ${dev.mappings.length} mappings, model ${want.size}`;
    if (dev.details.mappedBlocks !== want.size)
      return `device ${dev.id}: mapped_blocks ${dev.details.mappedBlocks}, model ${want.size}`;
    for (const [vblock, m] of dev.mappings) {
      if (want.get(vblock) !== m.dataBlock)
        return `device ${dev.id} block ${vblock}: ${m.dataBlock}, model ${want.get(vblock)}`;
    }
  }
  return undefined;
}

describe('B-tree and space maps against a model', () => {
  const seed = testSeed();
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it(`survives ${OPERATIONS} random operations (seed ${seed})`, async () => {
    const rnd = seededRandom(seed);
    const metadata = sparseFile(path.join(tmp.dir, 'metadata'), 64 * 2 ** 20);
    let md = ThinMetadata.format(metadata, { dataBlockSectors: 128, nrDataBlocks: DATA_BLOCKS });
    const model: Model = new Map();
    // Keys each device has held, for picking removal victims cheaply (entries may be stale).
    const keys = new Map<number, number[]>();
    let nextId = 0;
    const newDevice = () => {
      md.createThin(nextId);
      model.set(nextId, new Map());
      keys.set(nextId, []);
      nextId++;
    };
    newDevice();
    newDevice();

    const touched = new Set<number>();
    let commits = 0;
    let toolChecks = 0;
    let maxDepth = 0;
    const stats = { insert: 0, overwrite: 0, remove: 0, lookup: 0, snap: 0, delete: 0 };
    // A sequential fill first, so device 0's tree is deep enough for internal nodes to split
    // and merge during the random phase.
    const fill = Math.floor(OPERATIONS * 0.35);
    for (let op = 1; op <= OPERATIONS; op++) {
      const ids = [...model.keys()];
      // Device 0 takes half the work so its tree grows past two levels; it is never deleted.
      const id = rnd.next() < 0.5 ? 0 : rnd.pick(ids);
      const dev = model.get(id)!;
      touched.add(id);
      // A long growing phase, then alternating shrinking and growing so that splits and merges
      // (of leaves and of internal nodes) both happen often.
      const growing = Math.floor(op / (0.15 * OPERATIONS)) % 2 === 1;
      const r = rnd.next();
      if (op <= fill) {
        const vblock = op * 2;
        const dataBlock = md.dataSm.counts.allocate()!;
        md.insertMapping(0, vblock, dataBlock);
        model.get(0)!.set(vblock, dataBlock);
        keys.get(0)!.push(vblock);
        stats.insert++;
      } else if (r < 0.0015 && ids.length < 10) {
        const snapId = nextId++;
        md.createSnap(snapId, id);
        model.set(snapId, new Map(dev));
        touched.add(snapId);
        keys.set(snapId, [...dev.keys()]);
        stats.snap++;
      } else if (r < 0.002 && ids.length > 2 && id !== 0) {
        md.deleteDevice(id);
        model.delete(id);
        keys.delete(id);
        stats.delete++;
      } else if (r < (growing ? 0.8 : 0.3)) {
        // Mostly clustered keys, as real writes are, with some scattered ones.
        const vblock = rnd.next() < 0.7 ? (op * 13 + rnd.int(64)) % VBLOCKS : rnd.int(VBLOCKS);
        const dataBlock = md.dataSm.counts.allocate()!;
        if (dev.has(vblock)) stats.overwrite++;
        else {
          stats.insert++;
          keys.get(id)!.push(vblock);
        }
        md.insertMapping(id, vblock, dataBlock);
        dev.set(vblock, dataBlock);
      } else if (r < 0.9) {
        const held = keys.get(id)!;
        let vblock = rnd.int(VBLOCKS);
        if (held.length && rnd.next() < 0.9) {
          const i = rnd.int(held.length);
          vblock = held[i];
          held[i] = held[held.length - 1];
          held.pop();
        }
        expect(md.removeMapping(id, vblock)).toBe(dev.delete(vblock));
        stats.remove++;
      } else {
        const vblock = rnd.int(VBLOCKS);
        expect(md.lookupMapping(id, vblock)?.dataBlock).toBe(dev.get(vblock));
        stats.lookup++;
      }

      if (op % COMMIT_EVERY === 0 || op === OPERATIONS) {
        md.commit();
        md.close();
        commits++;
        md = ThinMetadata.open(metadata);
        expect({ commit: commits, difference: compareWithModel(md, model) }).toEqual({
          commit: commits,
          difference: undefined,
        });
        const report = checkMetadata(metadata);
        expect({ commit: commits, errors: report.errors }).toEqual({ commit: commits, errors: [] });
        for (const id of model.keys()) {
          let depth = 0;
          for (let n = md.mappings.node(md.deviceRoot(id)!); !n.isLeaf; n = md.mappings.node(n.child(0)))
            depth++;
          maxDepth = Math.max(maxDepth, depth);
        }
        if (commits % 10 === 0) {
          toolChecks++;
          for (const result of await thinCheckBoth(metadata)) expect(result).toMatchObject({ code: 0 });
        }
      }
    }
    md.close();
    // The run must really have exercised what it claims to.
    expect(commits).toBeGreaterThanOrEqual(OPERATIONS / COMMIT_EVERY);
    expect(toolChecks).toBeGreaterThanOrEqual(Math.floor(commits / 10));
    expect(stats.snap).toBeGreaterThan(0);
    expect(stats.remove).toBeGreaterThan(OPERATIONS / 10);
    expect(maxDepth).toBeGreaterThanOrEqual(OPERATIONS >= 100_000 ? 2 : 1);
    note(JSON.stringify({ seed, commits, toolChecks, maxDepth, ...stats }));
  }, 600_000);
});
