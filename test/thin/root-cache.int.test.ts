// Regression: the device-root lookup cache must not outlive a change made in place. A trim
// (removeMapping) looked the device up, then changed a top-level leaf already shadowed in this
// transaction; the next lookup saw the old tree and a write went to a freed data block.
import path from 'node:path';
import { ThinMetadata } from '../../src/thin/metadata';
import { makeTempDir, sparseFile } from '../helpers/tmp';

const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

it('sees a removal at once when the top-level root was already shadowed in the transaction', () => {
  const md = ThinMetadata.format(sparseFile(path.join(tmp.dir, 'meta'), 8 * 2 ** 20), {
    dataBlockSectors: 128,
    nrDataBlocks: 1024,
  });
  md.createThin(1);
  md.createThin(2);
  md.insertMapping(1, 5, md.dataSm.counts.allocate()!);
  md.commit();
  md.insertMapping(2, 0, md.dataSm.counts.allocate()!); // shadows the top-level root
  expect(md.lookupMapping(1, 5)).toBeDefined(); // fills the cache
  expect(md.removeMapping(1, 5)).toBe(true);
  expect(md.lookupMapping(1, 5)).toBeUndefined();
  const block = md.dataSm.counts.allocate()!;
  md.insertMapping(1, 6, block);
  expect(md.lookupMapping(1, 6)?.dataBlock).toBe(block);
  expect(md.lookupMapping(1, 5)).toBeUndefined();
  md.close();
});
