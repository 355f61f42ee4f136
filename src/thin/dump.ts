import { readU64 } from '../pdata/block-validator';
import { DeviceDetails, Mapping, decodeDetails, decodeMapping } from './mapping';
import { ThinMetadata } from './metadata';
import { Superblock, THIN_VERSION } from './superblock';

export interface DumpedDevice {
  id: number;
  details: DeviceDetails;
  /** [virtual block, mapping] in block order. */
  mappings: [number, Mapping][];
}

/** Every device and mapping reachable from a superblock (the live one or the held snapshot). */
export function* dumpDevices(
  md: ThinMetadata,
  sb: Superblock = md.sb,
  only?: ReadonlySet<number>,
): Generator<DumpedDevice> {
  const details = new Map<number, DeviceDetails>();
  for (const [id, v] of md.details.entries(sb.deviceDetailsRoot)) details.set(id, decodeDetails(v));
  for (const [id, v] of md.devices.entries(sb.dataMappingRoot)) {
    if (only && !only.has(id)) continue;
    const mappings: [number, Mapping][] = [];
    for (const [vblock, m] of md.mappings.entries(readU64(v, 0))) mappings.push([vblock, decodeMapping(m)]);
    yield { id, details: details.get(id)!, mappings };
  }
}

/** The same XML that thin_dump prints (runs of consecutive blocks with one time are coalesced). */
export function dumpXml(md: ThinMetadata, sb: Superblock = md.sb): string {
  const out: string[] = [];
  out.push(
    `<superblock uuid="" time="${sb.time}" transaction="${sb.transactionId}" flags="${sb.flags}" version="${THIN_VERSION}" ` +
      `data_block_size="${sb.dataBlockSectors}" nr_data_blocks="${sb.dataSpaceMap.nrBlocks}">`,
  );
  for (const dev of dumpDevices(md, sb)) {
    const d = dev.details;
    out.push(
      `  <device dev_id="${dev.id}" mapped_blocks="${d.mappedBlocks}" transaction="${d.transactionId}" ` +
        `creation_time="${d.creationTime}" snap_time="${d.snapshottedTime}">`,
    );
    const m = dev.mappings;
    for (let i = 0; i < m.length;) {
      let j = i + 1;
      while (
        j < m.length &&
        m[j][0] === m[j - 1][0] + 1 &&
        m[j][1].dataBlock === m[j - 1][1].dataBlock + 1 &&
        m[j][1].time === m[i][1].time
      ) {
        j++;
      }
      const [vblock, first] = m[i];
      out.push(
        j - i === 1
          ? `    <single_mapping origin_block="${vblock}" data_block="${first.dataBlock}" time="${first.time}"/>`
          : `    <range_mapping origin_begin="${vblock}" data_begin="${first.dataBlock}" length="${j - i}" time="${first.time}"/>`,
      );
      i = j;
    }
    out.push('  </device>');
  }
  out.push('</superblock>');
  return out.join('\n') + '\n';
}
