// A pool the engine did not make: LVM-style metadata restored from XML by thin_restore (through
// `thinpool pool import-xml`) over a data file whose blocks are tagged. Its devices must be
// adopted, list as thin_dump describes them, export byte for byte what their mappings point at,
// take snapshots, and leave metadata both thin_check versions accept. Read-only commands on
// such metadata work without a catalogue and write nothing.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ADOPTED_LABEL } from '../../src/thin/catalogue';
import { Pool } from '../../src/thin/pool';
import { thinpool } from '../helpers/cli';
import { makeTempDir } from '../helpers/tmp';
import { thinCheckBoth, thinDump, thinRestore } from '../helpers/thin-oracle';

const BLOCK = 64 * 1024;
const NR_DATA_BLOCKS = 256;

// Two thin volumes of a volume group and a snapshot of the first, as `lvcreate -s` leaves them:
// shared ranges, blocks the origin rewrote after the snapshot, a transaction id LVM moved on.
const XML = `<superblock uuid="" time="2" transaction="11" version="2" data_block_size="128" nr_data_blocks="${NR_DATA_BLOCKS}">
  <device dev_id="1" mapped_blocks="23" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="10" length="16" time="0"/>
    <range_mapping origin_begin="16" data_begin="60" length="4" time="1"/>
    <single_mapping origin_block="40" data_block="30" time="0"/>
    <single_mapping origin_block="41" data_block="31" time="0"/>
    <single_mapping origin_block="99" data_block="32" time="2"/>
  </device>
  <device dev_id="2" mapped_blocks="3" transaction="3" creation_time="0" snap_time="0">
    <range_mapping origin_begin="5" data_begin="100" length="3" time="0"/>
  </device>
  <device dev_id="5" mapped_blocks="22" transaction="9" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="10" length="20" time="0"/>
    <single_mapping origin_block="40" data_block="30" time="0"/>
    <single_mapping origin_block="41" data_block="31" time="0"/>
  </device>
</superblock>
`;

/** vblock → data block of each device, read from thin_dump's XML. */
function mappingsOf(xml: string): Map<number, Map<number, number>> {
  const devices = new Map<number, Map<number, number>>();
  let current: Map<number, number> | undefined;
  for (const line of xml.split('\n')) {
    const attr = (name: string) => Number(new RegExp(`\\b${name}="(\\d+)"`).exec(line)?.[1]);
    if (line.includes('<device ')) devices.set(attr('dev_id'), (current = new Map()));
    else if (line.includes('<range_mapping '))
      for (let i = 0; i < attr('length'); i++) current!.set(attr('origin_begin') + i, attr('data_begin') + i);
    else if (line.includes('<single_mapping ')) current!.set(attr('origin_block'), attr('data_block'));
  }
  return devices;
}

/** Every data block gets contents that name it, so a wrong mapping shows as wrong bytes. */
function tagged(dataBlock: number): Buffer {
  const buf = Buffer.alloc(BLOCK);
  for (let off = 0; off < BLOCK; off += 32)
    crypto.createHash('sha256').update(`block ${dataBlock} at ${off}`).digest().copy(buf, off);
  return buf;
}

function expectedImage(mappings: Map<number, number>, sizeBytes: number): Buffer {
  const image = Buffer.alloc(sizeBytes);
  for (const [vblock, dataBlock] of mappings) tagged(dataBlock).copy(image, vblock * BLOCK);
  return image;
}

describe('a pool restored from thin_dump XML (another tool made it)', () => {
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());
  const xmlFile = path.join(tmp.dir, 'lvm.xml');
  const dataFile = path.join(tmp.dir, 'tdata');

  beforeAll(() => {
    fs.writeFileSync(xmlFile, XML);
    const fd = fs.openSync(dataFile, 'w');
    for (let b = 0; b < NR_DATA_BLOCKS; b++) fs.writeSync(fd, tagged(b), 0, BLOCK, b * BLOCK);
    fs.closeSync(fd);
  });

  it('answers read-only commands without a catalogue, and writes nothing', async () => {
    const dir = path.join(tmp.dir, 'read-only');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'metadata'), '');
    fs.truncateSync(path.join(dir, 'metadata'), 8 * 2 ** 20);
    await thinRestore(xmlFile, path.join(dir, 'metadata'));
    fs.symlinkSync(dataFile, path.join(dir, 'data'));
    const before = fs.readFileSync(path.join(dir, 'metadata'));

    const status = await thinpool(['pool', 'status', dir, '--json']);
    expect(status.code).toBe(0);
    const s = JSON.parse(status.stdout);
    expect(s).toMatchObject({ transactionId: 11, devices: 3 });
    expect(s.catalogue).toMatchObject({ entries: 3, adopted: [1, 2, 5], missing: [] });

    const list = await thinpool(['thin', 'list', dir, '--json']);
    expect(list.code).toBe(0);
    expect(JSON.parse(list.stdout).devices.map((d: { id: number }) => d.id)).toEqual([1, 2, 5]);

    const delta = await thinpool(['thin', 'delta', dir, '5', '1', '--json']);
    expect(delta.code).toBe(0);
    // 16..19 were rewritten in the origin after the snapshot; 99 was written to the origin only.
    expect(JSON.parse(delta.stdout).ranges).toEqual([
      { kind: 'different', begin: 16, length: 4 },
      { kind: 'right_only', begin: 99, length: 1 },
    ]);

    const out = path.join(tmp.dir, 'ro-export.img');
    expect((await thinpool(['thin', 'export', dir, '2', out])).code).toBe(0);
    const mappings = mappingsOf(await thinDump(path.join(dir, 'metadata')));
    expect(fs.readFileSync(out).equals(expectedImage(mappings.get(2)!, 8 * BLOCK))).toBe(true);

    // Nothing was written: the metadata is byte for byte the same and no catalogue appeared.
    expect(fs.readFileSync(path.join(dir, 'metadata')).equals(before)).toBe(true);
    expect(fs.readdirSync(dir).sort()).toEqual(['data', 'metadata']);
  });

  it('imports it in one command; devices list, export and snapshot as thin_dump describes', async () => {
    const dir = path.join(tmp.dir, 'imported');
    const r = await thinpool([
      'pool',
      'import-xml',
      dir,
      xmlFile,
      '--data-device',
      dataFile,
      '--size',
      '2=1M',
      '--json',
    ]);
    expect({ code: r.code, stderr: r.stderr }).toMatchObject({ code: 0 });
    expect(JSON.parse(r.stdout).catalogue).toMatchObject({ entries: 3, adopted: [1, 2, 5], missing: [] });
    const metadata = path.join(dir, 'metadata');
    const dumped = await thinDump(metadata);
    const mappings = mappingsOf(dumped);
    expect([...mappings.keys()]).toEqual([1, 2, 5]);

    const pool = await Pool.open(dir, { commitIntervalMs: 0 });
    try {
      // Adopted once: a second open finds them in the catalogue.
      expect(pool.status().catalogue).toMatchObject({ adopted: [], missing: [] });
      const devices = pool.listDevices();
      expect(devices.map((d) => [d.id, d.details.mappedBlocks])).toEqual(
        [...mappings].map(([id, m]) => [id, m.size]),
      );
      for (const d of devices) expect(d.labels[ADOPTED_LABEL]).toBe('true');
      // dm-thin keeps no size: the last mapped block bounds it, unless --size said otherwise.
      expect(pool.deviceInfo(1).sizeBytes).toBe(100 * BLOCK);
      expect(pool.deviceInfo(2).sizeBytes).toBe(2 ** 20);
      for (const d of devices) {
        const image = await pool.device(d.id).read(0, d.sizeBytes);
        expect(image.equals(expectedImage(mappings.get(d.id)!, d.sizeBytes))).toBe(true);
      }

      const snap = await pool.createSnap('auto', 1);
      expect(snap.id).toBe(0);
      expect(pool.status().transactionId).toBe(12);
      await pool.device(1).write(0, Buffer.alloc(4096, 0xee));
      const snapImage = await pool.device(snap.id).read(0, snap.sizeBytes);
      expect(snapImage.equals(expectedImage(mappings.get(1)!, snap.sizeBytes))).toBe(true);
    } finally {
      await pool.close();
    }
    for (const result of await thinCheckBoth(metadata)) expect(result).toMatchObject({ code: 0 });
    const after = mappingsOf(await thinDump(metadata));
    expect([...after.keys()]).toEqual([0, 1, 2, 5]);
    expect(after.get(0)).toEqual(mappings.get(1));
  });

  it('refuses bad input with a clear message and leaves nothing behind', async () => {
    const dir = path.join(tmp.dir, 'bad');
    const notXml = path.join(tmp.dir, 'not.xml');
    fs.writeFileSync(notXml, 'hello\n');
    const r = await thinpool(['pool', 'import-xml', dir, notXml]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/not thin_dump XML: no data_block_size/);
    const small = path.join(tmp.dir, 'small-data');
    fs.writeFileSync(small, Buffer.alloc(BLOCK));
    const s = await thinpool(['pool', 'import-xml', dir, xmlFile, '--data-device', small]);
    expect(s.code).not.toBe(0);
    expect(s.stderr).toMatch(/holds 64 KiB but the XML describes 16 MiB of data/);
    expect(fs.existsSync(dir) ? fs.readdirSync(dir) : []).toEqual([]);
  });
});
