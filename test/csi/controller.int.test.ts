// Identity and Controller services through gRPC on the driver's unix socket: success paths,
// idempotency, concurrency and the error codes of the CSI spec's tables.
import { Writable } from 'node:stream';
import winston from 'winston';
import { log } from '../../src/log';
import { GiB, MiB, type TestDriver, blockCap, expectCode, grpc, mountCap, startDriver } from './helpers';

const { status } = grpc;

/** The info-level log entries written while `fn` runs (tests otherwise log at warn). */
async function infoLogsOf(fn: () => Promise<void>): Promise<Record<string, unknown>[]> {
  const entries: Record<string, unknown>[] = [];
  const transport = new winston.transports.Stream({
    level: 'info',
    // Object mode hands over winston's entries before any console formatting (colours).
    stream: new Writable({
      objectMode: true,
      write(entry: Record<string | symbol, unknown>, _encoding, done) {
        if (entry[Symbol.for('level')] === 'info' && entry.component === 'controller') entries.push(entry);
        done();
      },
    }),
  });
  const level = log.level;
  log.level = 'info';
  log.add(transport);
  try {
    await fn();
  } finally {
    log.remove(transport);
    log.level = level;
  }
  return entries;
}

describe('Identity', () => {
  it('reports info and capabilities, and Probe is not ready until the pool is open', async () => {
    const t = await startDriver();
    try {
      const info = await t.identity.call('GetPluginInfo');
      expect(info).toMatchObject({
        name: 'thinpool.csi.dev',
        vendor_version: expect.stringMatching(/^\d+\.\d+\.\d+/),
      });
      const caps = (await t.identity.call('GetPluginCapabilities')).capabilities;
      const types = caps.map(
        (c: { service?: { type: string }; volume_expansion?: { type: string } }) =>
          c.service?.type ?? `EXPAND_${c.volume_expansion?.type}`,
      );
      expect(types.sort()).toEqual(
        [
          'CONTROLLER_SERVICE',
          'EXPAND_OFFLINE',
          'EXPAND_ONLINE',
          'SNAPSHOT_METADATA_SERVICE',
          'VOLUME_ACCESSIBILITY_CONSTRAINTS',
        ].sort(),
      );
      expect(await t.identity.call('Probe')).toEqual({ ready: { value: true } });
    } finally {
      await t.close();
    }
    // A second driver that has bound its socket but not opened its pool yet.
    const { Driver } = await import('../../src/csi/driver');
    const u = await startDriver();
    await u.driver.stop();
    u.driver = new Driver(u.config);
    await u.driver.start({ openPool: false });
    const { connect } = await import('./helpers');
    const identity = connect(u.config.endpoint, 'Identity');
    const controller = connect(u.config.endpoint, 'Controller');
    try {
      expect(await identity.call('Probe')).toEqual({ ready: { value: false } });
      await expectCode(controller.call('ListVolumes', {}), status.UNAVAILABLE);
    } finally {
      identity.close();
      controller.close();
      await u.close();
    }
  });
});

describe('Controller', () => {
  let t: TestDriver;
  beforeAll(async () => {
    t = await startDriver({ poolDataSizeBytes: 1 * GiB, maxOverprovisionRatio: 4 });
  });
  afterAll(async () => {
    await t.close();
  });
  const create = (name: string, extra: Record<string, unknown> = {}) =>
    t.controller.call('CreateVolume', {
      name,
      volume_capabilities: [mountCap()],
      capacity_range: { required_bytes: 64 * MiB },
      ...extra,
    });

  it('lists its capabilities', async () => {
    const caps = (await t.controller.call('ControllerGetCapabilities')).capabilities.map(
      (c: { rpc: { type: string } }) => c.rpc.type,
    );
    expect(caps).toEqual(
      expect.arrayContaining([
        'CREATE_DELETE_VOLUME',
        'PUBLISH_UNPUBLISH_VOLUME',
        'CREATE_DELETE_SNAPSHOT',
        'CLONE_VOLUME',
        'EXPAND_VOLUME',
        'GET_VOLUME',
        'VOLUME_CONDITION',
        'LIST_VOLUMES',
        'LIST_SNAPSHOTS',
        'GET_CAPACITY',
        'PUBLISH_READONLY',
      ]),
    );
  });

  it('creates volumes idempotently by name and refuses incompatible repeats', async () => {
    const a = await create('idem');
    expect(a.volume).toMatchObject({
      capacity_bytes: 64 * MiB,
      volume_id: expect.stringMatching(/^default:\d+:[0-9a-f-]{36}$/),
    });
    expect(a.volume.accessible_topology).toEqual([
      { segments: { 'topology.thinpool.csi.dev/node': 'node-a' } },
    ]);
    expect((await create('idem')).volume.volume_id).toBe(a.volume.volume_id);
    await expectCode(
      create('idem', { capacity_range: { required_bytes: 128 * MiB } }),
      status.ALREADY_EXISTS,
    );
    await expectCode(create('idem', { parameters: { maxOverprovisionRatio: '2' } }), status.ALREADY_EXISTS);
    // Sidecar keys do not count.
    expect(
      (await create('idem', { parameters: { 'csi.storage.k8s.io/pvc/name': 'x' } })).volume.volume_id,
    ).toBe(a.volume.volume_id);
    await t.controller.call('DeleteVolume', { volume_id: a.volume.volume_id });
    // A new volume of the same name gets a new id: ids are never reused.
    const b = await create('idem');
    expect(b.volume.volume_id).not.toBe(a.volume.volume_id);
    await expectCode(
      t.controller.call('ControllerGetVolume', { volume_id: a.volume.volume_id }),
      status.NOT_FOUND,
    );
    await t.controller.call('DeleteVolume', { volume_id: b.volume.volume_id });
  });

  it('makes one volume out of parallel creates of the same name', async () => {
    const results = await Promise.allSettled(Array.from({ length: 8 }, () => create('race')));
    const ids = new Set(
      results
        .filter((r) => r.status === 'fulfilled')
        .map((r) => (r as PromiseFulfilledResult<{ volume: { volume_id: string } }>).value.volume.volume_id),
    );
    expect(ids.size).toBe(1);
    expect(results.every((r) => r.status === 'fulfilled')).toBe(true);
    const listed = (await t.controller.call('ListVolumes', {})).entries.filter(
      (e: { volume: { volume_id: string } }) => ids.has(e.volume.volume_id),
    );
    expect(listed).toHaveLength(1);
    await t.controller.call('DeleteVolume', { volume_id: [...ids][0] });
  });

  it('validates CreateVolume requests', async () => {
    await expectCode(create(''), status.INVALID_ARGUMENT);
    await expectCode(create('x'.repeat(129)), status.INVALID_ARGUMENT);
    await expectCode(create('nocap', { volume_capabilities: [] }), status.INVALID_ARGUMENT);
    await expectCode(create('badfs', { volume_capabilities: [mountCap('btrfs')] }), status.INVALID_ARGUMENT);
    await expectCode(
      create('multi', { volume_capabilities: [mountCap('ext4', 'MULTI_NODE_MULTI_WRITER')] }),
      status.INVALID_ARGUMENT,
    );
    await expectCode(create('param', { parameters: { colour: 'blue' } }), status.INVALID_ARGUMENT);
    await expectCode(
      create('ratio', { parameters: { maxOverprovisionRatio: '0.5' } }),
      status.INVALID_ARGUMENT,
    );
    await expectCode(create('neg', { capacity_range: { required_bytes: -1 } }), status.INVALID_ARGUMENT);
    await expectCode(
      create('inv', { capacity_range: { required_bytes: 2 * MiB, limit_bytes: MiB } }),
      status.INVALID_ARGUMENT,
    );
    await expectCode(
      create('huge', { capacity_range: { required_bytes: 32 * 1024 * GiB } }),
      status.OUT_OF_RANGE,
    );
    await expectCode(
      create('odd', { capacity_range: { required_bytes: MiB + 1, limit_bytes: MiB + 2 } }),
      status.OUT_OF_RANGE,
    );
    // Overprovisioning: 1 GiB pool × 4.
    await expectCode(
      create('toobig', { capacity_range: { required_bytes: 5 * GiB } }),
      status.RESOURCE_EXHAUSTED,
    );
    await expectCode(
      create('elsewhere', {
        accessibility_requirements: {
          requisite: [{ segments: { 'topology.thinpool.csi.dev/node': 'node-b' } }],
        },
      }),
      status.RESOURCE_EXHAUSTED,
    );
    await expectCode(
      create('nosnap', {
        volume_content_source: {
          snapshot: { snapshot_id: 'default:99:00000000-0000-0000-0000-000000000000' },
        },
      }),
      status.NOT_FOUND,
    );
    await expectCode(
      create('novol', {
        volume_content_source: { volume: { volume_id: 'default:99:00000000-0000-0000-0000-000000000000' } },
      }),
      status.NOT_FOUND,
    );
    // Nothing was created by any of these.
    expect((await t.controller.call('ListVolumes', {})).entries).toEqual([]);
  });

  it('rounds sizes to the block size and uses the default when none is asked', async () => {
    const a = await create('round', { capacity_range: { required_bytes: 10 * MiB + 1 } });
    expect(a.volume.capacity_bytes).toBe(10 * MiB + 64 * 1024);
    const b = await create('default', { capacity_range: null });
    expect(b.volume.capacity_bytes).toBe(GiB);
    for (const v of [a, b]) await t.controller.call('DeleteVolume', { volume_id: v.volume.volume_id });
  });

  it('publishes and unpublishes as NBD grants', async () => {
    const { volume } = await create('pub');
    const id = volume.volume_id;
    const cap = mountCap();
    const req = { volume_id: id, node_id: 'node-a', volume_capability: cap, readonly: false };
    const first = await t.controller.call('ControllerPublishVolume', req);
    expect(first.publish_context).toMatchObject({
      endpoint: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
      export: expect.stringMatching(/^vol\d+-[0-9a-f]+\/.{20,}$/),
      readonly: 'false',
    });
    expect(await t.controller.call('ControllerPublishVolume', req)).toEqual(first);
    await expectCode(
      t.controller.call('ControllerPublishVolume', { ...req, readonly: true }),
      status.ALREADY_EXISTS,
    );
    await expectCode(
      t.controller.call('ControllerPublishVolume', { ...req, node_id: 'node-b' }),
      status.FAILED_PRECONDITION,
    );
    await expectCode(
      t.controller.call('ControllerPublishVolume', { ...req, node_id: '' }),
      status.INVALID_ARGUMENT,
    );
    await expectCode(
      t.controller.call('ControllerPublishVolume', { ...req, volume_capability: null }),
      status.INVALID_ARGUMENT,
    );
    await expectCode(
      t.controller.call('ControllerPublishVolume', {
        ...req,
        volume_id: 'default:77:00000000-0000-0000-0000-000000000000',
      }),
      status.NOT_FOUND,
    );
    expect(t.driver.nbd!.exports.list().map((e) => e.name)).toHaveLength(2);
    const got = await t.controller.call('ControllerGetVolume', { volume_id: id });
    expect(got.status.published_node_ids).toEqual(['node-a']);
    expect(got.status.volume_condition).toEqual({ abnormal: false, message: expect.any(String) });
    await expectCode(t.controller.call('DeleteVolume', { volume_id: id }), status.FAILED_PRECONDITION);
    await t.controller.call('ControllerUnpublishVolume', { volume_id: id, node_id: 'node-a' });
    await t.controller.call('ControllerUnpublishVolume', { volume_id: id, node_id: 'node-a' });
    expect(t.driver.nbd!.exports.list()).toEqual([]);
    // Read-only publishing to several nodes.
    const ro = {
      volume_id: id,
      volume_capability: mountCap('ext4', 'MULTI_NODE_READER_ONLY'),
      readonly: true,
    };
    await t.controller.call('ControllerPublishVolume', { ...ro, node_id: 'n1' });
    const p2 = await t.controller.call('ControllerPublishVolume', { ...ro, node_id: 'n2' });
    expect(p2.publish_context.readonly).toBe('true');
    await t.controller.call('ControllerUnpublishVolume', { volume_id: id, node_id: '' });
    expect(
      (await t.controller.call('ControllerGetVolume', { volume_id: id })).status.published_node_ids,
    ).toEqual([]);
    await t.controller.call('DeleteVolume', { volume_id: id });
    await t.controller.call('DeleteVolume', { volume_id: id });
    await t.controller.call('DeleteVolume', { volume_id: 'not-ours' });
    await expectCode(t.controller.call('DeleteVolume', { volume_id: '' }), status.INVALID_ARGUMENT);
  });

  it('regards a volume or node it cannot find as unpublished', async () => {
    const unpublish = (volume_id: string, node_id = 'node-a') =>
      t.controller.call('ControllerUnpublishVolume', { volume_id, node_id });
    const { volume } = await create('unpub-gone');
    const id = volume.volume_id;
    const req = { volume_id: id, node_id: 'node-a', volume_capability: mountCap(), readonly: false };
    await t.controller.call('ControllerPublishVolume', req);
    // A node the volume was never published to: OK, and the real grant stays.
    const notes = await infoLogsOf(async () => expect(await unpublish(id, 'node-never')).toEqual({}));
    expect(notes).toEqual([
      expect.objectContaining({ message: expect.stringMatching(/nothing to unpublish/), node: 'node-never' }),
    ]);
    expect(
      (await t.controller.call('ControllerGetVolume', { volume_id: id })).status.published_node_ids,
    ).toEqual(['node-a']);
    expect(t.driver.nbd!.exports.list()).toHaveLength(2);
    await expectCode(t.controller.call('DeleteVolume', { volume_id: id }), status.FAILED_PRECONDITION);
    expect(await unpublish(id)).toEqual({});
    await t.controller.call('DeleteVolume', { volume_id: id });
    // The sidecars retry unpublish after the delete: OK, for one node or all of them.
    const gone = await infoLogsOf(async () => {
      expect(await unpublish(id)).toEqual({});
      expect(await unpublish(id, '')).toEqual({});
    });
    expect(gone).toEqual([
      expect.objectContaining({ message: expect.stringMatching(/nothing to unpublish/), volume: id }),
      expect.objectContaining({ message: expect.stringMatching(/nothing to unpublish/), volume: id }),
    ]);
    // The stale id leaves a new volume alone, even one on the same device id.
    const { volume: next } = await create('unpub-next');
    await t.controller.call('ControllerPublishVolume', { ...req, volume_id: next.volume_id });
    expect(await unpublish(id)).toEqual({});
    expect(t.driver.nbd!.exports.list()).toHaveLength(2);
    expect(
      (await t.controller.call('ControllerGetVolume', { volume_id: next.volume_id })).status
        .published_node_ids,
    ).toEqual(['node-a']);
    // Well-formed ids that never existed, and ids that are not ours at all.
    expect(await unpublish('default:77:00000000-0000-0000-0000-000000000000')).toEqual({});
    expect(await unpublish('other-pool:1:00000000-0000-0000-0000-000000000000', 'node-x')).toEqual({});
    expect(await unpublish('not-ours')).toEqual({});
    // A missing volume id is still the caller's mistake.
    await expectCode(unpublish(''), status.INVALID_ARGUMENT);
    await expectCode(unpublish('', ''), status.INVALID_ARGUMENT);
    await unpublish(next.volume_id);
    await t.controller.call('DeleteVolume', { volume_id: next.volume_id });
    expect(t.driver.nbd!.exports.list()).toEqual([]);
  });

  it('validates capabilities', async () => {
    const { volume } = await create('val');
    const ok = await t.controller.call('ValidateVolumeCapabilities', {
      volume_id: volume.volume_id,
      volume_capabilities: [mountCap('xfs'), blockCap()],
    });
    expect(ok.confirmed.volume_capabilities).toHaveLength(2);
    const no = await t.controller.call('ValidateVolumeCapabilities', {
      volume_id: volume.volume_id,
      volume_capabilities: [mountCap('ext4', 'MULTI_NODE_MULTI_WRITER')],
    });
    expect(no.confirmed).toBeNull();
    expect(no.message).toMatch(/not supported/);
    await expectCode(
      t.controller.call('ValidateVolumeCapabilities', {
        volume_id: volume.volume_id,
        volume_capabilities: [],
      }),
      status.INVALID_ARGUMENT,
    );
    await expectCode(
      t.controller.call('ValidateVolumeCapabilities', {
        volume_id: 'default:5:00000000-0000-0000-0000-000000000000',
        volume_capabilities: [mountCap()],
      }),
      status.NOT_FOUND,
    );
    await t.controller.call('DeleteVolume', { volume_id: volume.volume_id });
  });

  it('pages through volumes and snapshots', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await create(`page-${i}`)).volume.volume_id);
    const seen: string[] = [];
    let token = '';
    do {
      const page = await t.controller.call('ListVolumes', { max_entries: 2, starting_token: token });
      expect(page.entries.length).toBeLessThanOrEqual(2);
      seen.push(...page.entries.map((e: { volume: { volume_id: string } }) => e.volume.volume_id));
      token = page.next_token;
    } while (token);
    expect(seen).toEqual(ids);
    await expectCode(t.controller.call('ListVolumes', { starting_token: 'bogus' }), status.ABORTED);
    const snaps: string[] = [];
    for (let i = 0; i < 3; i++)
      snaps.push(
        (await t.controller.call('CreateSnapshot', { source_volume_id: ids[i % 2], name: `ps-${i}` }))
          .snapshot.snapshot_id,
      );
    const all = await t.controller.call('ListSnapshots', { max_entries: 2 });
    expect(all.entries).toHaveLength(2);
    const rest = await t.controller.call('ListSnapshots', { starting_token: all.next_token });
    expect(
      [...all.entries, ...rest.entries].map(
        (e: { snapshot: { snapshot_id: string } }) => e.snapshot.snapshot_id,
      ),
    ).toEqual(snaps);
    const ofFirst = await t.controller.call('ListSnapshots', { source_volume_id: ids[0] });
    expect(ofFirst.entries.map((e: { snapshot: { snapshot_id: string } }) => e.snapshot.snapshot_id)).toEqual(
      [snaps[0], snaps[2]],
    );
    const one = await t.controller.call('ListSnapshots', { snapshot_id: snaps[1] });
    expect(one.entries).toHaveLength(1);
    expect(
      (
        await t.controller.call('ListSnapshots', {
          snapshot_id: 'default:1:00000000-0000-0000-0000-000000000000',
        })
      ).entries,
    ).toEqual([]);
    await expectCode(t.controller.call('ListSnapshots', { starting_token: 'x' }), status.ABORTED);
    for (const s of snaps) await t.controller.call('DeleteSnapshot', { snapshot_id: s });
    for (const id of ids) await t.controller.call('DeleteVolume', { volume_id: id });
  });

  it('creates snapshots idempotently and restores them', async () => {
    const { volume } = await create('snapsrc');
    const dev = t.driver.pool!.device(Number(volume.volume_id.split(':')[1]));
    await dev.write(0, Buffer.alloc(65536, 7));
    const s1 = await t.controller.call('CreateSnapshot', {
      source_volume_id: volume.volume_id,
      name: 'snap1',
    });
    expect(s1.snapshot).toMatchObject({
      size_bytes: 64 * MiB,
      source_volume_id: volume.volume_id,
      ready_to_use: true,
    });
    expect(Math.abs(s1.snapshot.creation_time.seconds * 1000 - Date.now())).toBeLessThan(60_000);
    expect(
      (await t.controller.call('CreateSnapshot', { source_volume_id: volume.volume_id, name: 'snap1' }))
        .snapshot,
    ).toEqual(s1.snapshot);
    const other = await create('snapother');
    await expectCode(
      t.controller.call('CreateSnapshot', { source_volume_id: other.volume.volume_id, name: 'snap1' }),
      status.ALREADY_EXISTS,
    );
    await expectCode(
      t.controller.call('CreateSnapshot', { source_volume_id: volume.volume_id, name: '' }),
      status.INVALID_ARGUMENT,
    );
    await expectCode(
      t.controller.call('CreateSnapshot', { source_volume_id: '', name: 's' }),
      status.INVALID_ARGUMENT,
    );
    await expectCode(
      t.controller.call('CreateSnapshot', {
        source_volume_id: 'default:88:00000000-0000-0000-0000-000000000000',
        name: 's',
      }),
      status.NOT_FOUND,
    );
    await expectCode(
      t.controller.call('CreateSnapshot', {
        source_volume_id: volume.volume_id,
        name: 's',
        parameters: { x: 'y' },
      }),
      status.INVALID_ARGUMENT,
    );
    expect(
      (await t.controller.call('GetSnapshot', { snapshot_id: s1.snapshot.snapshot_id })).snapshot,
    ).toEqual(s1.snapshot);
    // Too small for the snapshot → OUT_OF_RANGE; bigger → grown.
    await expectCode(
      create('restore-small', {
        capacity_range: { required_bytes: MiB, limit_bytes: 2 * MiB },
        volume_content_source: { snapshot: { snapshot_id: s1.snapshot.snapshot_id } },
      }),
      status.OUT_OF_RANGE,
    );
    const restored = await create('restore', {
      capacity_range: { required_bytes: 128 * MiB },
      volume_content_source: { snapshot: { snapshot_id: s1.snapshot.snapshot_id } },
    });
    expect(restored.volume.capacity_bytes).toBe(128 * MiB);
    expect(restored.volume.content_source).toEqual({
      snapshot: { snapshot_id: s1.snapshot.snapshot_id },
      type: 'snapshot',
    });
    const rdev = t.driver.pool!.device(Number(restored.volume.volume_id.split(':')[1]));
    expect((await rdev.read(0, 65536)).equals(Buffer.alloc(65536, 7))).toBe(true);
    // Deleting the source volume leaves the snapshot usable.
    await t.controller.call('DeleteVolume', { volume_id: volume.volume_id });
    const again = await create('restore2', {
      volume_content_source: { snapshot: { snapshot_id: s1.snapshot.snapshot_id } },
    });
    expect(again.volume.capacity_bytes).toBe(64 * MiB);
    await t.controller.call('DeleteSnapshot', { snapshot_id: s1.snapshot.snapshot_id });
    await t.controller.call('DeleteSnapshot', { snapshot_id: s1.snapshot.snapshot_id });
    await expectCode(t.controller.call('DeleteSnapshot', { snapshot_id: '' }), status.INVALID_ARGUMENT);
    await expectCode(
      t.controller.call('GetSnapshot', { snapshot_id: s1.snapshot.snapshot_id }),
      status.NOT_FOUND,
    );
    for (const v of [other, restored, again])
      await t.controller.call('DeleteVolume', { volume_id: v.volume.volume_id });
  });

  it('expands volumes and reports capacity', async () => {
    const cap0 = await t.controller.call('GetCapacity', {});
    expect(cap0.available_capacity).toBe(4 * GiB);
    const { volume } = await create('grow');
    const cap1 = await t.controller.call('GetCapacity', { volume_capabilities: [mountCap()] });
    expect(cap1.available_capacity).toBe(4 * GiB - 64 * MiB);
    expect(cap1.maximum_volume_size).toEqual({ value: 4 * GiB - 64 * MiB });
    expect(
      (
        await t.controller.call('GetCapacity', {
          accessible_topology: { segments: { 'topology.thinpool.csi.dev/node': 'zz' } },
        })
      ).available_capacity,
    ).toBe(0);
    const req = {
      volume_id: volume.volume_id,
      capacity_range: { required_bytes: 256 * MiB },
      volume_capability: mountCap(),
    };
    expect(await t.controller.call('ControllerExpandVolume', req)).toEqual({
      capacity_bytes: 256 * MiB,
      node_expansion_required: true,
    });
    expect(await t.controller.call('ControllerExpandVolume', req)).toEqual({
      capacity_bytes: 256 * MiB,
      node_expansion_required: true,
    });
    expect(
      await t.controller.call('ControllerExpandVolume', { ...req, volume_capability: blockCap() }),
    ).toEqual({ capacity_bytes: 256 * MiB, node_expansion_required: false });
    await expectCode(
      t.controller.call('ControllerExpandVolume', { ...req, capacity_range: { required_bytes: 5 * GiB } }),
      status.RESOURCE_EXHAUSTED,
    );
    await expectCode(
      t.controller.call('ControllerExpandVolume', {
        ...req,
        capacity_range: { required_bytes: 64 * 1024 * GiB },
      }),
      status.OUT_OF_RANGE,
    );
    await expectCode(
      t.controller.call('ControllerExpandVolume', { ...req, capacity_range: { limit_bytes: MiB } }),
      status.OUT_OF_RANGE,
    );
    await expectCode(
      t.controller.call('ControllerExpandVolume', { ...req, capacity_range: null }),
      status.INVALID_ARGUMENT,
    );
    await expectCode(
      t.controller.call('ControllerExpandVolume', {
        ...req,
        volume_id: 'default:66:00000000-0000-0000-0000-000000000000',
      }),
      status.NOT_FOUND,
    );
    expect(
      (await t.controller.call('ControllerGetVolume', { volume_id: volume.volume_id })).volume.capacity_bytes,
    ).toBe(256 * MiB);
    await t.controller.call('DeleteVolume', { volume_id: volume.volume_id });
  });

  it('reports ABORTED when a different operation holds the volume', async () => {
    const release = await t.driver.locks.acquire('ControllerPublishVolume', ['volume:v-locked']);
    try {
      await expectCode(t.controller.call('DeleteVolume', { volume_id: 'v-locked' }), status.ABORTED);
    } finally {
      release();
    }
    await t.controller.call('DeleteVolume', { volume_id: 'v-locked' });
  });

  it('keeps volumes, snapshots and grants across a restart', async () => {
    const { volume } = await create('persist');
    const snap = await t.controller.call('CreateSnapshot', {
      source_volume_id: volume.volume_id,
      name: 'persist-snap',
    });
    const pub = await t.controller.call('ControllerPublishVolume', {
      volume_id: volume.volume_id,
      node_id: 'node-a',
      volume_capability: mountCap(),
    });
    await t.restart();
    expect(
      (await t.controller.call('ControllerGetVolume', { volume_id: volume.volume_id })).volume.volume_id,
    ).toBe(volume.volume_id);
    expect(
      (await t.controller.call('ListSnapshots', { snapshot_id: snap.snapshot.snapshot_id })).entries,
    ).toHaveLength(1);
    const again = await t.controller.call('ControllerPublishVolume', {
      volume_id: volume.volume_id,
      node_id: 'node-a',
      volume_capability: mountCap(),
    });
    expect(again.publish_context.export).toBe(pub.publish_context.export);
    expect(t.driver.nbd!.exports.list()).toHaveLength(2);
    await t.controller.call('ControllerUnpublishVolume', { volume_id: volume.volume_id, node_id: 'node-a' });
    await t.controller.call('DeleteSnapshot', { snapshot_id: snap.snapshot.snapshot_id });
    await t.controller.call('DeleteVolume', { volume_id: volume.volume_id });
  });
});
