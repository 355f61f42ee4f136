// Checks after a kill, with the server down: the metadata as the kill left it (our checker and
// both thin_check versions), then the pool reopened in this process exactly as the driver opens
// it (journal replay, catalogue reconciliation): every device the client was told of, with its
// CSI name and contents, nothing else; then the metadata again after the reopen committed.
import path from 'node:path';
import { Pool, type PoolStatus } from '../../../src/thin/pool';
import { checkMetadata } from '../../../src/thin/check';
import {
  LABEL_KIND,
  LABEL_NAME,
  LABEL_PUBLISH_PREFIX,
  LABEL_SOURCE,
  LABEL_UID,
} from '../../../src/csi/store';
import { thinCheckBoth, thinDump } from '../../helpers/thin-oracle';
import type { Model } from './model';
import { NODE_ID } from './server';
import type { Stats } from './stats';

/** What `status()` reports once the lmdb catalogue lands (absent before). */
interface CatalogueStatus {
  entries: number;
  adopted: number[];
  missing: number[];
}

export async function checkMetadataFile(poolDir: string, when: string, stats: Stats): Promise<string[]> {
  const metadata = path.join(poolDir, 'metadata');
  const failures: string[] = [];
  const ours = checkMetadata(metadata);
  stats.checkerRuns++;
  if (ours.errors.length) failures.push(`our checker ${when}: ${ours.errors.slice(0, 5).join('; ')}`);
  for (const r of await thinCheckBoth(metadata)) {
    stats.thinCheckRuns++;
    if (r.code !== 0) failures.push(`thin_check ${r.version} ${when} exited ${r.code}: ${r.output.trim()}`);
  }
  return failures;
}

/** Device ids in the metadata, as thin_dump (the oracle, not our code) reads them. */
async function metadataDeviceIds(poolDir: string): Promise<number[]> {
  const xml = await thinDump(path.join(poolDir, 'metadata'));
  return [...xml.matchAll(/<device dev_id="(\d+)"/g)].map((m) => Number(m[1])).sort((a, b) => a - b);
}

/**
 * Reopens the pool, compares devices and contents with the model and settles every call the kill
 * cut short into the outcome found (the model then matches the pool exactly).
 */
export async function reopenAndVerify(
  poolDir: string,
  poolName: string,
  model: Model,
  goneNames: Set<string>,
  stats: Stats,
  ackSince: number,
): Promise<string[]> {
  const failures: string[] = [];
  const pool = await Pool.open(poolDir, { commitIntervalMs: 0 });
  let listed: number[] = [];
  try {
    const status = pool.status() as PoolStatus & { catalogue?: CatalogueStatus };
    if (status.mode !== 'read-write' || status.needsCheck)
      failures.push(`pool reopened ${status.mode}${status.needsCheck ? ' with needs_check' : ''}`);
    if (!status.catalogue) stats.catalogueFieldAbsent++;
    else if (status.catalogue.adopted.length || status.catalogue.missing.length)
      failures.push(
        `catalogue at reopen: adopted ${JSON.stringify(status.catalogue.adopted)}, missing ${JSON.stringify(status.catalogue.missing)}`,
      );

    const devices = pool.listDevices();
    listed = devices.map((d) => d.id).sort((a, b) => a - b);
    const byName = new Map<string, (typeof devices)[number]>();
    for (const d of devices) {
      const name = d.labels[LABEL_NAME];
      if (!name || !d.labels[LABEL_UID] || !d.labels[LABEL_KIND])
        failures.push(`device ${d.id} has no CSI labels: ${JSON.stringify(d.labels)}`);
      else if (byName.has(name))
        failures.push(`two devices named ${name}: ${byName.get(name)!.id} and ${d.id}`);
      else byName.set(name, d);
      if (name && goneNames.has(name)) failures.push(`${name} (device ${d.id}) was deleted and is back`);
      else if (name && !model.byName(name))
        failures.push(`device ${d.id} (${name}) was never created by the client`);
    }

    for (const obj of model.objects) {
      const d = byName.get(obj.name);
      const idOf = (x: NonNullable<typeof d>) => `${poolName}:${x.id}:${x.labels[LABEL_UID]}`;
      if (obj.state === 'creating' || obj.state === 'deleting') {
        const created = obj.state === 'creating';
        if (created === Boolean(d)) stats[created ? 'cutShortCreates' : 'cutShortDeletes'].happened++;
        else stats[created ? 'cutShortCreates' : 'cutShortDeletes'].undone++;
        if (!d) {
          obj.state = 'gone';
          continue;
        }
        if (obj.csiId && obj.csiId !== idOf(d)) failures.push(`${obj.name}: id ${idOf(d)}, was ${obj.csiId}`);
        obj.csiId = idOf(d);
        obj.state = 'live';
      } else if (obj.state === 'gone') {
        if (d) failures.push(`${obj.name} was deleted (acknowledged) and is back as device ${d.id}`);
        continue;
      } else if (!d) {
        failures.push(`${obj.name} (${obj.csiId}) was created (acknowledged) and is gone`);
        continue;
      } else if (idOf(d) !== obj.csiId) {
        failures.push(`${obj.name}: device is ${idOf(d)}, the client was told ${obj.csiId}`);
        continue;
      }
      if (d.labels[LABEL_KIND] !== obj.kind) failures.push(`${obj.name}: kind ${d.labels[LABEL_KIND]}`);
      if (obj.kind === 'snapshot' && d.labels[LABEL_SOURCE] !== obj.sourceId)
        failures.push(`${obj.name}: source ${d.labels[LABEL_SOURCE]}, not ${obj.sourceId}`);
      const sizes = [obj.content.sizeBytes, obj.growingTo ?? obj.content.sizeBytes];
      if (!sizes.includes(d.sizeBytes))
        failures.push(`${obj.name}: ${d.sizeBytes} bytes, expected ${sizes.join(' or ')}`);
      obj.content.grow(d.sizeBytes);
      if (obj.growingTo === d.sizeBytes) obj.growingTo = undefined;
      const published = LABEL_PUBLISH_PREFIX + NODE_ID in d.labels;
      if (obj.publication === 'published' && !published) failures.push(`${obj.name}: publication label lost`);
      if (obj.publication === 'unpublished' && published)
        failures.push(`${obj.name}: unpublished, label back`);
      obj.publication = published ? 'published' : 'unpublished';

      const got = await pool.device(d.id, { readOnly: obj.kind === 'snapshot' }).read(0, d.sizeBytes);
      const bad = obj.content.check(got);
      if (bad) failures.push(`${obj.name} (device ${d.id}) after reopen: ${JSON.stringify(bad)}`);
      const seen = obj.content.visibleChanges(ackSince);
      stats.changesVerified += seen.all;
      stats.unflushedChangesVerified += seen.unflushed;
      stats.bytesVerified += got.length;
      obj.content.adopt(got);
    }
  } finally {
    await pool.close();
  }
  stats.reopensInProcess++;
  failures.push(...(await checkMetadataFile(poolDir, 'after the reopen', stats)));
  const inMetadata = await metadataDeviceIds(poolDir);
  if (inMetadata.join(',') !== listed.join(','))
    failures.push(`thin_dump lists devices ${inMetadata.join(',')}; the pool listed ${listed.join(',')}`);
  return failures;
}
