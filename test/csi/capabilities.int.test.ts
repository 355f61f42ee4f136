// Capabilities on the wire, through the driver's unix socket: with the default configuration every
// advertised value is one that CSI spec v1.11.0 names, because the sidecars many clusters run
// (csi-provisioner v5.2.0, csi-snapshotter v8.2.0) vendor v1.11.0 and crash on a value it does not
// name (issue #23). GET_SNAPSHOT (CSI 1.12) appears only when asked for.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { grpcAddress, parseCsiEndpoint } from '../../src/csi/endpoint';
import { LOADER_OPTIONS, PROTO_FILE } from '../../src/csi/proto';
import { MiB, type TestDriver, mountCap, startDriver } from './helpers';

/**
 * The enums of CSI spec v1.11.0 that capabilities use, number → name, as in csi.proto of
 * github.com/container-storage-interface/spec at tag v1.11.0. Only other versions of that file were
 * at hand, so the lists are derived: proto/csi.proto (v1.12.0) without GET_SNAPSHOT = 15, the value
 * the spec's "Add GetSnapshot RPC" change (PR #586, April 2025, after v1.11.0 of November 2024) added
 * for v1.12.0; a later generated csi.pb.go (vendored by csi-driver-host-path) numbers the same
 * names the same way and puts everything newer after them. UNKNOWN = 0 is left out: advertising it
 * is never right.
 * GroupControllerServiceCapability is not listed: the driver has no GroupController service (see
 * proto/csi.proto), and the first test fails if GROUP_CONTROLLER_SERVICE is ever advertised.
 */
const CSI_V1_11_0 = {
  'PluginCapability.Service.Type': {
    1: 'CONTROLLER_SERVICE',
    2: 'VOLUME_ACCESSIBILITY_CONSTRAINTS',
    3: 'GROUP_CONTROLLER_SERVICE',
    4: 'SNAPSHOT_METADATA_SERVICE',
  },
  'PluginCapability.VolumeExpansion.Type': { 1: 'ONLINE', 2: 'OFFLINE' },
  'ControllerServiceCapability.RPC.Type': {
    1: 'CREATE_DELETE_VOLUME',
    2: 'PUBLISH_UNPUBLISH_VOLUME',
    3: 'LIST_VOLUMES',
    4: 'GET_CAPACITY',
    5: 'CREATE_DELETE_SNAPSHOT',
    6: 'LIST_SNAPSHOTS',
    7: 'CLONE_VOLUME',
    8: 'PUBLISH_READONLY',
    9: 'EXPAND_VOLUME',
    10: 'LIST_VOLUMES_PUBLISHED_NODES',
    11: 'VOLUME_CONDITION',
    12: 'GET_VOLUME',
    13: 'SINGLE_NODE_MULTI_WRITER',
    14: 'MODIFY_VOLUME',
  },
  'NodeServiceCapability.RPC.Type': {
    1: 'STAGE_UNSTAGE_VOLUME',
    2: 'GET_VOLUME_STATS',
    3: 'EXPAND_VOLUME',
    4: 'VOLUME_CONDITION',
    5: 'SINGLE_NODE_MULTI_WRITER',
    6: 'VOLUME_MOUNT_GROUP',
  },
} as const satisfies Record<string, Record<number, string>>;

type EnumName = keyof typeof CSI_V1_11_0;
type Capability = { service?: { type: number }; volume_expansion?: { type: number }; rpc?: { type: number } };

/** One advertised value as an old sidecar sees it: the enum it belongs to and its wire number. */
interface Advertised {
  enum: EnumName;
  number: number;
}

// A client that reads enums as numbers, so that the test sees what is on the wire, not what our
// own (newer) proto file would name.
function numericClients(endpoint: string): Record<'Identity' | 'Controller' | 'Node', grpc.Client> {
  const definition = protoLoader.loadSync(PROTO_FILE, { ...LOADER_OPTIONS, enums: Number });
  const csi = (
    grpc.loadPackageDefinition(definition) as unknown as {
      csi: { v1: Record<string, grpc.ServiceClientConstructor> };
    }
  ).csi.v1;
  const address = grpcAddress(parseCsiEndpoint(endpoint));
  const make = (name: string) => new csi[name](address, grpc.credentials.createInsecure());
  return { Identity: make('Identity'), Controller: make('Controller'), Node: make('Node') };
}

function call(client: grpc.Client, method: string): Promise<{ capabilities: Capability[] }> {
  const fn = (client as unknown as Record<string, (...args: unknown[]) => void>)[method];
  return new Promise((resolve, reject) =>
    fn.call(client, {}, (error: Error | null, reply: { capabilities: Capability[] }) =>
      error ? reject(error) : resolve(reply),
    ),
  );
}

async function advertised(endpoint: string): Promise<Advertised[]> {
  const clients = numericClients(endpoint);
  try {
    const plugin = (await call(clients.Identity, 'GetPluginCapabilities')).capabilities;
    const controller = (await call(clients.Controller, 'ControllerGetCapabilities')).capabilities;
    const node = (await call(clients.Node, 'NodeGetCapabilities')).capabilities;
    return [
      ...plugin.map((c): Advertised =>
        c.service
          ? { enum: 'PluginCapability.Service.Type', number: c.service.type }
          : { enum: 'PluginCapability.VolumeExpansion.Type', number: c.volume_expansion!.type },
      ),
      ...controller.map((c): Advertised => ({
        enum: 'ControllerServiceCapability.RPC.Type',
        number: c.rpc!.type,
      })),
      ...node.map((c): Advertised => ({ enum: 'NodeServiceCapability.RPC.Type', number: c.rpc!.type })),
    ];
  } finally {
    for (const client of Object.values(clients)) client.close();
  }
}

const v1110Name = (a: Advertised): string | undefined =>
  (CSI_V1_11_0[a.enum] as Record<number, string>)[a.number];

describe('advertised capabilities', () => {
  let t: TestDriver;
  afterEach(async () => {
    await t?.close();
  });

  it('are all named by CSI spec v1.11.0 with the default configuration, and GetSnapshot still works', async () => {
    t = await startDriver();
    expect(t.config.role).toBe('all');
    const values = await advertised(t.config.endpoint);
    // Every service answered with something, so an empty list cannot pass by accident.
    expect(new Set(values.map((v) => v.enum)).size).toBe(4);
    const unknown = values.filter((v) => v1110Name(v) === undefined);
    expect(unknown).toEqual([]);
    const names = values.map(v1110Name);
    expect(names).not.toContain('GROUP_CONTROLLER_SERVICE');
    expect(names).not.toContain('GET_SNAPSHOT');

    // Not advertising GET_SNAPSHOT changes nothing about the RPC itself.
    const volume = await t.controller.call('CreateVolume', {
      name: 'caps-v',
      volume_capabilities: [mountCap()],
      capacity_range: { required_bytes: 16 * MiB },
    });
    const created = await t.controller.call('CreateSnapshot', {
      name: 'caps-s',
      source_volume_id: volume.volume.volume_id,
    });
    const got = await t.controller.call('GetSnapshot', { snapshot_id: created.snapshot.snapshot_id });
    expect(got.snapshot).toEqual(created.snapshot);
  });

  it('include GET_SNAPSHOT (15) when advertiseGetSnapshot is on', async () => {
    t = await startDriver({ advertiseGetSnapshot: true });
    const controller = (await advertised(t.config.endpoint)).filter(
      (v) => v.enum === 'ControllerServiceCapability.RPC.Type',
    );
    expect(controller.map((v) => v.number)).toContain(15);
    // Only that one value is beyond v1.11.0.
    expect(controller.filter((v) => v1110Name(v) === undefined).map((v) => v.number)).toEqual([15]);
    const named = (await t.controller.call('ControllerGetCapabilities')).capabilities.map(
      (c: { rpc: { type: string } }) => c.rpc.type,
    );
    expect(named).toContain('GET_SNAPSHOT');
  });
});
