// Our reader against metadata written by thin_restore: the devices and mappings we read must be
// exactly what thin_dump prints, and our checker must find the image clean.
import fs from 'node:fs';
import path from 'node:path';
import { ThinMetadata } from '../../src/thin/metadata';
import { dumpXml } from '../../src/thin/dump';
import { checkMetadata } from '../../src/thin/check';
import { makeTempDir, sparseFile } from '../helpers/tmp';
import { normaliseXml, thinCheckBoth, thinDump, thinRestore } from '../helpers/thin-oracle';

let tmp: ReturnType<typeof makeTempDir>;
beforeAll(() => (tmp = makeTempDir()));
afterAll(() => tmp.cleanup());

/** Several devices with ≥ 10,000 mappings in runs, singles and shared ranges over several tree levels. */
function largeXml(): string {
  const lines = [
    `<superblock uuid="" time="3" transaction="9" version="2" data_block_size="128" nr_data_blocks="100000">`,
  ];
  let nextData = 0;
  const origin: string[] = [];
  let mapped = 0;
  for (let vblock = 0; vblock < 12000;) {
    const run = 1 + ((vblock * 7919) % 13);
    origin.push(
      `    <range_mapping origin_begin="${vblock}" data_begin="${nextData}" length="${run}" time="${vblock % 3}"/>`,
    );
    nextData += run + 1;
    mapped += run;
    vblock += run + (vblock % 5 === 0 ? 3 : 0);
  }
  lines.push(
    `  <device dev_id="1" mapped_blocks="${mapped}" transaction="0" creation_time="0" snap_time="2">`,
    ...origin,
    '  </device>',
  );
  lines.push(
    `  <device dev_id="2" mapped_blocks="${mapped}" transaction="3" creation_time="2" snap_time="2">`,
    ...origin,
    '  </device>',
  );
  const singles: string[] = [];
  for (let i = 0; i < 3000; i++)
    singles.push(`    <single_mapping origin_block="${i * 97}" data_block="${nextData + i}" time="3"/>`);
  lines.push(
    `  <device dev_id="16777215" mapped_blocks="3000" transaction="8" creation_time="3" snap_time="3">`,
    ...singles,
    '  </device>',
  );
  lines.push('</superblock>');
  return lines.join('\n');
}

const fixtures: Record<string, () => string> = {
  empty: () =>
    `<superblock uuid="" time="0" transaction="0" version="2" data_block_size="128" nr_data_blocks="1024">\n</superblock>`,
  'two devices sharing mappings': () =>
    fs.readFileSync(path.join(__dirname, '../fixtures/two-devices.xml'), 'utf8'),
  'over 10,000 mappings': largeXml,
};

describe.each(Object.keys(fixtures))('metadata restored by thin_restore: %s', (name) => {
  let metadata: string;
  beforeAll(async () => {
    const xml = path.join(tmp.dir, `${name}.xml`);
    fs.writeFileSync(xml, fixtures[name]());
    metadata = sparseFile(path.join(tmp.dir, `${name}.meta`), 32 * 2 ** 20);
    await thinRestore(xml, metadata);
  });

  it('reads exactly the devices and mappings thin_dump prints', async () => {
    const md = ThinMetadata.open(metadata, { readOnly: true });
    try {
      md.verifyTrees();
      expect(normaliseXml(dumpXml(md))).toBe(normaliseXml(await thinDump(metadata)));
    } finally {
      md.close();
    }
  });

  it('passes our own checker', () => {
    const report = checkMetadata(metadata);
    expect(report.errors).toEqual([]);
  });
});

describe('large fixture', () => {
  it('spans several B-tree levels', async () => {
    const xml = path.join(tmp.dir, 'levels.xml');
    fs.writeFileSync(xml, largeXml());
    const metadata = sparseFile(path.join(tmp.dir, 'levels.meta'), 32 * 2 ** 20);
    await thinRestore(xml, metadata);
    const md = ThinMetadata.open(metadata, { readOnly: true });
    try {
      const root = md.deviceRoot(1)!;
      let depth = 0;
      for (let node = md.mappings.node(root); !node.isLeaf; node = md.mappings.node(node.child(0))) depth++;
      expect(depth).toBeGreaterThanOrEqual(1);
      expect(md.mappings.count(root)).toBeGreaterThan(10000);
    } finally {
      md.close();
    }
  });
});

describe('a held metadata snapshot on restored metadata', () => {
  it('shows the frozen state to thin_dump -m and the new state to thin_dump, and both tools pass', async () => {
    const xml = path.join(tmp.dir, 'held.xml');
    fs.writeFileSync(xml, fs.readFileSync(path.join(__dirname, '../fixtures/two-devices.xml')));
    const metadata = sparseFile(path.join(tmp.dir, 'held.meta'), 32 * 2 ** 20);
    await thinRestore(xml, metadata);

    const md = ThinMetadata.open(metadata);
    const frozen = dumpXml(md);
    md.reserveMetadataSnap();
    // Change both devices after the reservation: remap, unmap and add.
    md.insertMapping(3, 0, md.dataSm.counts.allocate()!);
    md.removeMapping(7, 77);
    md.insertMapping(7, 9999, md.dataSm.counts.allocate()!);
    md.commit();
    const live = dumpXml(md);
    const held = dumpXml(md, md.heldSuperblock()!);
    md.close();

    // The snapshot's space-map roots are zeroed, so it shows nr_data_blocks="0".
    expect(held).toBe(frozen.replace(/nr_data_blocks="\d+"/, 'nr_data_blocks="0"'));
    expect(live).not.toBe(frozen);
    expect(normaliseXml(await thinDump(metadata))).toBe(normaliseXml(live));
    expect(normaliseXml(await thinDump(metadata, ['-m']))).toBe(normaliseXml(held));
    for (const r of await thinCheckBoth(metadata)) expect(r).toMatchObject({ code: 0 });
    expect(checkMetadata(metadata).errors).toEqual([]);
  });
});
