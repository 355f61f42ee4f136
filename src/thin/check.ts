import { BlockManager } from '../pdata/block-manager';
import { readU64 } from '../pdata/block-validator';
import { RefTally, TreeChecker } from '../pdata/btree/check';
import { bitmapValidator, decodeIndexEntry } from '../pdata/space-map/persistent-space-map';
import { metadataIndexValidator } from '../pdata/space-map/metadata-space-map';
import { ENTRIES_PER_BITMAP } from '../pdata/space-map/ref-counts';
import { RefCounts } from '../pdata/space-map/ref-counts';
import { DEVICE_DETAILS_SIZE, decodeDetails, decodeMapping } from './mapping';
import { ThinMetadata } from './metadata';
import { SUPERBLOCK_LOCATION, Superblock } from './superblock';

export interface CheckReport {
  ok: boolean;
  errors: string[];
  /** Harmless oddities other writers leave (thin_restore 0.9 over-counts nr_allocated). */
  warnings: string[];
  transactionId?: number;
  devices: number;
  mappings: number;
  metadataBlocksUsed: number;
  dataBlocksUsed: number;
}

/**
 * Our own thin_check: every reachable block's checksum and node rules, device details against
 * the mapping trees, and both space maps' reference counts against counts recomputed from the
 * trees (which thin_check 0.9 skips for data).
 */
export function checkMetadata(path: string): CheckReport {
  const report: CheckReport = {
    ok: false,
    errors: [],
    warnings: [],
    devices: 0,
    mappings: 0,
    metadataBlocksUsed: 0,
    dataBlocksUsed: 0,
  };
  let md: ThinMetadata;
  try {
    md = ThinMetadata.open(path, { readOnly: true, cacheBlocks: 1024 });
  } catch (e) {
    report.errors.push(`cannot open metadata: ${(e as Error).message}`);
    return report;
  }
  try {
    checkOpened(md, report);
  } catch (e) {
    report.errors.push(`check stopped: ${(e as Error).message}`);
  } finally {
    md.close();
  }
  report.ok = report.errors.length === 0;
  return report;
}

function checkOpened(md: ThinMetadata, report: CheckReport): void {
  const sb = md.sb;
  const errors = report.errors;
  report.transactionId = sb.transactionId;
  const metadataRefs = new RefTally(md.metadataSm.counts.nrBlocks);
  const dataRefs = new RefTally(sb.dataSpaceMap.nrBlocks);
  const trees = new TreeChecker(md.bm, metadataRefs, errors);

  metadataRefs.add(SUPERBLOCK_LOCATION);
  checkSpaceMapStructures(md, trees, metadataRefs);

  const live = checkThinTrees(md, sb, trees, dataRefs, 'live');
  report.devices = live.devices;
  report.mappings = live.mappings;
  if (sb.heldRoot) {
    metadataRefs.add(sb.heldRoot);
    try {
      const held = ThinMetadata.readSuperblock(md.bm, sb.heldRoot);
      checkThinTrees(md, held, trees, dataRefs, 'metadata snapshot');
    } catch (e) {
      errors.push(`metadata snapshot: ${(e as Error).message}`);
    }
  }

  compareCounts('metadata', md.metadataSm.counts, metadataRefs, errors);
  compareCounts('data', md.dataSm.counts, dataRefs, errors);
  report.metadataBlocksUsed = md.metadataSm.counts.nrAllocated;
  report.dataBlocksUsed = md.dataSm.counts.nrAllocated;
  if (sb.metadataSpaceMap.nrAllocated !== md.metadataSm.counts.nrAllocated) {
    report.warnings.push(
      `metadata space map: nr_allocated ${sb.metadataSpaceMap.nrAllocated}, counted ${md.metadataSm.counts.nrAllocated}`,
    );
  }
  if (sb.dataSpaceMap.nrAllocated !== md.dataSm.counts.nrAllocated) {
    report.warnings.push(
      `data space map: nr_allocated ${sb.dataSpaceMap.nrAllocated}, counted ${md.dataSm.counts.nrAllocated}`,
    );
  }
}

function checkSpaceMapStructures(md: ThinMetadata, trees: TreeChecker, refs: RefTally): void {
  const bm: BlockManager = md.bm;
  const metaRoot = md.sb.metadataSpaceMap;
  refs.add(metaRoot.bitmapRoot);
  const index = bm.read(metaRoot.bitmapRoot, metadataIndexValidator);
  for (let i = 0; i < Math.ceil(metaRoot.nrBlocks / ENTRIES_PER_BITMAP); i++) {
    const entry = decodeIndexEntry(index, 16 + 16 * i);
    refs.add(entry.blocknr);
    bm.read(entry.blocknr, bitmapValidator);
  }
  trees.check(metaRoot.refCountRoot, 4, 'metadata space map overflow tree');
  const dataRoot = md.sb.dataSpaceMap;
  trees.check(dataRoot.bitmapRoot, 16, 'data space map index', {
    leaf(node) {
      for (let i = 0; i < node.nrEntries; i++) {
        const entry = decodeIndexEntry(node.value(i), 0);
        refs.add(entry.blocknr);
        bm.read(entry.blocknr, bitmapValidator);
      }
    },
  });
  trees.check(dataRoot.refCountRoot, 4, 'data space map overflow tree');
}

function checkThinTrees(
  md: ThinMetadata,
  sb: Superblock,
  trees: TreeChecker,
  dataRefs: RefTally,
  label: string,
): { devices: number; mappings: number } {
  const errors = trees.errors;
  const details = new Map<number, ReturnType<typeof decodeDetails>>();
  trees.check(sb.deviceDetailsRoot, DEVICE_DETAILS_SIZE, `${label} device details`, {
    leaf(node) {
      for (let i = 0; i < node.nrEntries; i++) details.set(node.key(i), decodeDetails(node.value(i)));
    },
  });
  const nrDataBlocks = md.sb.dataSpaceMap.nrBlocks;
  const subtreeRoots = new Map<number, number>();
  trees.check(sb.dataMappingRoot, 8, `${label} mapping tree`, {
    leaf(node) {
      for (let i = 0; i < node.nrEntries; i++) subtreeRoots.set(node.key(i), readU64(node.value(i), 0));
    },
  });
  let mappings = 0;
  for (const [id, root] of subtreeRoots) {
    const count = trees.check(root, 8, `${label} device ${id}`, {
      leaf(node) {
        for (let i = 0; i < node.nrEntries; i++) {
          const m = decodeMapping(node.value(i));
          if (m.dataBlock >= nrDataBlocks)
            errors.push(
              `${label} device ${id}: block ${node.key(i)} maps to data block ${m.dataBlock} beyond ${nrDataBlocks}`,
            );
          else dataRefs.add(m.dataBlock);
          if (m.time > sb.time)
            errors.push(`${label} device ${id}: mapping time ${m.time} after pool time ${sb.time}`);
        }
      },
    });
    mappings += count;
    const d = details.get(id);
    if (!d) errors.push(`${label}: device ${id} has mappings but no details`);
    else if (d.mappedBlocks !== count)
      errors.push(`${label} device ${id}: details say ${d.mappedBlocks} mapped blocks, tree has ${count}`);
  }
  for (const id of details.keys())
    if (!subtreeRoots.has(id)) errors.push(`${label}: device ${id} has details but no mapping tree`);
  return { devices: subtreeRoots.size, mappings };
}

function compareCounts(what: string, stored: RefCounts, expected: RefTally, errors: string[]): void {
  let reported = 0;
  for (let b = 0; b < stored.nrBlocks; b++) {
    const want = expected.get(b);
    const got = stored.count(b);
    if (want !== got && reported++ < 20) {
      errors.push(
        `${what} block ${b}: reference count ${got}, expected ${want}${want === 0 ? ' (leaked)' : ''}`,
      );
    }
  }
  if (reported > 20) errors.push(`${what}: ${reported - 20} more reference count mismatches`);
  for (const b of expected.outOfRange()) errors.push(`${what} block ${b} referenced but outside the device`);
}
