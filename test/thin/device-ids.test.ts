// The lowest free device id, against a plain scan of a set, over random takes and frees.
import { DeviceIdSet } from '../../src/thin/device-ids';
import { seededRandom, testSeed } from '../helpers/random';

function lowestByScan(used: Set<number>): number {
  let id = 0;
  while (used.has(id)) id++;
  return id;
}

describe('DeviceIdSet', () => {
  const seed = testSeed();

  it(`gives the lowest free id after random takes and frees (seed ${seed})`, () => {
    const rnd = seededRandom(seed);
    const start = [0, 1, 2, 5, 9, 200];
    const ids = new DeviceIdSet(start);
    const model = new Set(start);
    for (let step = 0; step < 20_000; step++) {
      const r = rnd.next();
      if (r < 0.5) {
        const id = ids.lowestFree()!;
        expect(id).toBe(lowestByScan(model));
        ids.add(id);
        model.add(id);
      } else if (r < 0.6) {
        // An explicit id, possibly one that waits in the heap of freed ids.
        const id = rnd.int(400);
        ids.add(id);
        model.add(id);
      } else if (model.size) {
        const all = [...model];
        const id = rnd.pick(all);
        ids.delete(id);
        model.delete(id);
      }
      expect(ids.size).toBe(model.size);
    }
    expect(ids.lowestFree()).toBe(lowestByScan(model));
  });
});
