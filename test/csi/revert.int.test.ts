// `thinpool volume revert` against a real driver: the volume returns to its snapshot's data
// through the controller's RevertVolume RPC; a published volume, a snapshot of another volume
// and unknown ids are refused with the codes and messages a user needs.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { nbdUri } from '../../src/node/grant';
import { run } from '../../src/exec';
import { thinpool } from '../helpers/cli';
import { MiB, blockCap, startDriver, type TestDriver } from './helpers';

let t: TestDriver;
beforeAll(async () => {
  t = await startDriver();
});
afterAll(async () => {
  await t.close();
});

const deviceOf = (csiId: string) => Number(csiId.split(':')[1]);
const revert = (volume: string, snapshot: string, ...extra: string[]) =>
  thinpool(['volume', 'revert', volume, '--to', snapshot, '--endpoint', t.config.endpoint, ...extra]);

async function newVolume(name: string): Promise<string> {
  const r = await t.controller.call('CreateVolume', {
    name,
    volume_capabilities: [blockCap()],
    capacity_range: { required_bytes: 4 * MiB },
  });
  return r.volume.volume_id as string;
}

// The volume's whole content as a real NBD client (nbdcopy) reads it from a fresh grant.
async function readThroughNbd(volume: string): Promise<Buffer> {
  const publish = { volume_id: volume, node_id: 'node-a', volume_capability: blockCap(), readonly: true };
  const r = await t.controller.call('ControllerPublishVolume', publish);
  const ctx = r.publish_context as Record<string, string>;
  const grant = { endpoint: ctx.endpoint, exportName: ctx.export, growableExportName: '', readOnly: true };
  const out = path.join(t.dir, `read-${crypto.randomUUID()}.img`);
  try {
    await run('nbdcopy', [nbdUri(grant, grant.exportName), out]);
    return fs.readFileSync(out);
  } finally {
    fs.rmSync(out, { force: true });
    await t.controller.call('ControllerUnpublishVolume', { volume_id: volume, node_id: 'node-a' });
  }
}

it('after random writes, the volume reads through NBD exactly as its snapshot did', async () => {
  const volume = await newVolume('pvc-random');
  const dev = t.driver.pool!.device(deviceOf(volume));
  const size = 4 * MiB;
  const randomWrites = async (n: number) => {
    for (let i = 0; i < n; i++) {
      const length = 512 * (1 + crypto.randomInt(256));
      await dev.write(512 * crypto.randomInt((size - length) / 512), crypto.randomBytes(length));
    }
    await dev.flush();
  };
  await randomWrites(60);
  const snap = await t.controller.call('CreateSnapshot', { name: 'snap-random', source_volume_id: volume });
  const snapshot = snap.snapshot.snapshot_id as string;
  const expected = await dev.read(0, size);
  const later = await t.controller.call('CreateSnapshot', { name: 'snap-later', source_volume_id: volume });
  await randomWrites(60);
  const laterContent = await t.driver
    .pool!.device(deviceOf(later.snapshot.snapshot_id), { readOnly: true })
    .read(0, size);
  await randomWrites(60);
  expect((await dev.read(0, size)).equals(expected)).toBe(false);

  expect((await revert(volume, snapshot)).code).toBe(0);
  expect((await readThroughNbd(volume)).equals(expected)).toBe(true);
  const laterDev = t.driver.pool!.device(deviceOf(later.snapshot.snapshot_id), { readOnly: true });
  expect((await laterDev.read(0, size)).equals(laterContent)).toBe(true);
});

it('reverts an unpublished volume to its snapshot and refuses what it cannot do', async () => {
  const volume = await newVolume('pvc-revert');
  const dev = t.driver.pool!.device(deviceOf(volume));
  await dev.write(0, Buffer.alloc(MiB, 0x41));
  await dev.flush();
  const snap = await t.controller.call('CreateSnapshot', { name: 'snap-revert', source_volume_id: volume });
  const snapshot = snap.snapshot.snapshot_id as string;
  await dev.write(0, Buffer.alloc(MiB, 0x42));
  await dev.flush();

  const r = await revert(volume, snapshot, '--json');
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(JSON.parse(r.stdout)).toMatchObject({ volume_id: volume, capacity_bytes: 4 * MiB });
  expect((await dev.read(0, MiB)).every((x) => x === 0x41)).toBe(true);
  // Idempotent, and the snapshot is still listed and unchanged.
  expect((await revert(volume, snapshot)).code).toBe(0);
  const listed = await t.controller.call('ListSnapshots', { source_volume_id: volume });
  expect(listed.entries.map((e: { snapshot: { snapshot_id: string } }) => e.snapshot.snapshot_id)).toEqual([
    snapshot,
  ]);
  const snapDev = t.driver.pool!.device(deviceOf(snapshot), { readOnly: true });
  await dev.write(0, Buffer.alloc(4096, 0x43));
  expect((await snapDev.read(0, MiB)).every((x) => x === 0x41)).toBe(true);

  // Published: refused until unpublished.
  const publish = { volume_id: volume, node_id: 'node-a', volume_capability: blockCap(), readonly: false };
  await t.controller.call('ControllerPublishVolume', publish);
  const busy = await revert(volume, snapshot);
  expect(busy.code).not.toBe(0);
  expect(busy.stderr).toMatch(/FAILED_PRECONDITION: volume .* is published to node-a: unpublish it/);
  await t.controller.call('ControllerUnpublishVolume', { volume_id: volume, node_id: 'node-a' });
  expect((await revert(volume, snapshot)).code).toBe(0);

  // Another volume's snapshot, unknown ids, a missing snapshot id.
  const other = await newVolume('pvc-other');
  const foreign = await revert(other, snapshot);
  expect(foreign.stderr).toMatch(/FAILED_PRECONDITION: snapshot .* is not a snapshot of volume/);
  expect((await revert(volume, 'default:999:00000000-0000-0000-0000-000000000000')).stderr).toMatch(
    /NOT_FOUND: snapshot .* does not exist/,
  );
  expect((await revert('default:998:00000000-0000-0000-0000-000000000000', snapshot)).stderr).toMatch(
    /NOT_FOUND: volume .* does not exist/,
  );
  expect((await revert(volume, '')).stderr).toMatch(/INVALID_ARGUMENT: snapshot_id is required/);
});
