// `thinpool pool import-xml`: a pool from a thin_dump XML file (an LVM thin pool's, say).
// thin_restore, the format's own tool, writes the metadata; opening the pool read-write then
// adopts its devices into the catalogue, so nothing here knows the XML beyond the superblock.
import fs from 'node:fs';
import path from 'node:path';
import { run } from '../exec';
import { deviceSizeBytes } from '../pdata/device-size';
import { Pool } from '../thin/pool';
import { defaultMetadataBytes, poolPaths, prepareBacking } from '../thin/pool-files';
import { formatSize } from '../util/size';
import { CommandFailed } from './errors';

export interface ImportOptions {
  /** The pool's existing data (block device or file), linked as `<dir>/data`. */
  dataDevice?: string;
  metadataSizeBytes?: number;
  /** Virtual sizes to give devices (dm-thin stores none). */
  sizes?: { id: number; sizeBytes: number }[];
}

export async function importPoolXml(
  dir: string,
  xmlFile: string,
  options: ImportOptions = {},
): Promise<Pool> {
  const sb = readSuperblockAttributes(xmlFile);
  const paths = poolPaths(dir);
  if ([paths.metadata, paths.data, paths.catalogue, paths.legacyCatalogue].some((p) => fs.existsSync(p)))
    throw new CommandFailed(`${dir} already holds a pool; refusing to overwrite it`);
  const dataBytes = sb.nrDataBlocks * sb.dataBlockSectors * 512;
  fs.mkdirSync(dir, { recursive: true });
  fs.rmSync(paths.journal, { force: true });
  try {
    if (options.dataDevice) {
      fs.symlinkSync(path.resolve(options.dataDevice), paths.data);
      const fd = fs.openSync(paths.data, 'r');
      let have: number;
      try {
        have = deviceSizeBytes(fd, paths.data);
      } finally {
        fs.closeSync(fd);
      }
      if (have < dataBytes)
        throw new CommandFailed(
          `${options.dataDevice} holds ${formatSize(have)} but the XML describes ${formatSize(dataBytes)} of data`,
        );
    } else prepareBacking(paths.data, dataBytes, 'data');
    prepareBacking(
      paths.metadata,
      options.metadataSizeBytes ?? defaultMetadataBytes(sb.nrDataBlocks),
      'metadata',
    );
    await run('thin_restore', ['-i', xmlFile, '-o', paths.metadata]);
    const pool = await Pool.open(dir, { commitIntervalMs: 0 });
    try {
      for (const { id, sizeBytes } of options.sizes ?? []) await pool.resizeDevice(id, sizeBytes);
    } catch (e) {
      await pool.close();
      throw e;
    }
    return pool;
  } catch (e) {
    // Leave nothing half-made (for a data device only our link goes).
    for (const f of [paths.metadata, paths.data, paths.catalogue])
      fs.rmSync(f, { force: true, recursive: true });
    throw e;
  }
}

/** data_block_size and nr_data_blocks of the XML's `<superblock>` element, which comes first. */
function readSuperblockAttributes(xmlFile: string): { dataBlockSectors: number; nrDataBlocks: number } {
  let head: string;
  try {
    const fd = fs.openSync(xmlFile, 'r');
    try {
      const buf = Buffer.alloc(64 * 1024);
      head = buf.subarray(0, fs.readSync(fd, buf, 0, buf.length, 0)).toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch (e) {
    throw new CommandFailed(`cannot read ${xmlFile}: ${(e as Error).message}`);
  }
  const element = /<superblock\b([^>]*)>/.exec(head)?.[1];
  const attribute = (name: string) => {
    const m = element ? new RegExp(`\\b${name}="(\\d+)"`).exec(element) : null;
    const value = m ? Number(m[1]) : NaN;
    if (!Number.isSafeInteger(value) || value <= 0)
      throw new CommandFailed(`${xmlFile} is not thin_dump XML: no ${name} in its <superblock> element`);
    return value;
  };
  return { dataBlockSectors: attribute('data_block_size'), nrDataBlocks: attribute('nr_data_blocks') };
}
