// Driver configuration and the capabilities it implies. Every optional capability the driver
// advertises is decided here, in `capabilitiesOf`, from configuration alone.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type {
  ControllerServiceCapability,
  _csi_v1_ControllerServiceCapability_RPC_Type as ControllerRpc,
} from './generated/csi/v1/ControllerServiceCapability';
import type {
  NodeServiceCapability,
  _csi_v1_NodeServiceCapability_RPC_Type as NodeRpc,
} from './generated/csi/v1/NodeServiceCapability';
import type { PluginCapability } from './generated/csi/v1/PluginCapability';

export type Role = 'all' | 'controller' | 'node';
export type AttachMethod = 'auto' | 'kernel' | 'nbdfuse';
export type BlockMetadataTypeName = 'FIXED_LENGTH' | 'VARIABLE_LENGTH';

export const DRIVER_NAME = 'thinpool.csi.dev';
/** The topology key naming the node (and so the pool) a volume lives on. */
export const TOPOLOGY_NODE_KEY = 'topology.thinpool.csi.dev/node';

export interface DriverConfig {
  driverName: string;
  role: Role;
  /** CSI endpoint: a unix socket (path or unix:///path) or tcp://host:port. */
  endpoint: string;
  /** Name of the pool, part of every volume and snapshot id. */
  poolName: string;
  poolDir: string;
  /** Data size of a pool created on first start. */
  poolDataSizeBytes: number;
  /** Era tracking (dm-era) in a pool created on first start. */
  poolEra: boolean;
  /** NBD listener (controller side) and the host nodes should dial. */
  nbdHost: string;
  nbdPort: number;
  nbdAdvertiseHost: string;
  nodeId: string;
  /** Topology segments of this node (NodeGetInfo) and of the pool (CreateVolume). */
  topology: Record<string, string>;
  maxVolumesPerNode: number;
  /** Node-side state (staged volumes, nbdfuse mount points). */
  stateDir: string;
  /** Staging and target paths must lie below one of these. */
  kubeletDirs: string[];
  attachMethod: AttachMethod;
  /** Kernel attach: nbd-client's request timeout (-t). */
  nbdRequestTimeoutSeconds: number;
  /** Kernel attach: how long I/O waits for a reconnection before it fails. */
  nbdDeadConnectionTimeoutSeconds: number;
  /** Kernel attach: the nbd-reconnect program (native/nbd-reconnect.c). */
  nbdReconnectHelper: string;
  defaultFsType: 'ext4' | 'xfs';
  blockMetadataType: BlockMetadataTypeName;
  /** Σ volume sizes may reach this multiple of the pool's data size. */
  maxOverprovisionRatio: number;
  defaultVolumeBytes: number;
  minVolumeBytes: number;
  maxVolumeBytes: number;
  /** Per message in SnapshotMetadata streams when the client does not say. */
  defaultMaxResults: number;
  /** host:port for /metrics and /healthz; empty = off. */
  metricsListen: string;
  /**
   * Advertise GET_SNAPSHOT (CSI 1.12). Off by default: sidecars vendoring CSI 1.11 with
   * csi-lib-utils < v0.21 crash on a capability their spec has no name for. The RPC works either way.
   */
  advertiseGetSnapshot: boolean;
}

const GiB = 1024 ** 3;

// scripts/setup builds the helper into the checkout's .tools/bin; an image has it in PATH.
function defaultReconnectHelper(): string {
  const built = path.join(__dirname, '..', '..', '.tools', 'bin', 'nbd-reconnect');
  return fs.existsSync(built) ? built : 'nbd-reconnect';
}

export function defaultConfig(overrides: Partial<DriverConfig> = {}): DriverConfig {
  const varDir = path.resolve('var');
  const nodeId = overrides.nodeId ?? os.hostname();
  return {
    driverName: DRIVER_NAME,
    role: 'all',
    endpoint: path.join(varDir, 'csi.sock'),
    poolName: 'default',
    poolDir: path.join(varDir, 'pool'),
    poolDataSizeBytes: 10 * GiB,
    poolEra: true,
    nbdHost: '127.0.0.1',
    nbdPort: 10809,
    nbdAdvertiseHost: overrides.nbdHost ?? '127.0.0.1',
    nodeId,
    topology: { [TOPOLOGY_NODE_KEY]: nodeId },
    maxVolumesPerNode: 0,
    stateDir: path.join(varDir, 'node'),
    kubeletDirs: ['/var/lib/kubelet', varDir],
    attachMethod: 'auto',
    nbdRequestTimeoutSeconds: 30,
    nbdDeadConnectionTimeoutSeconds: 600,
    nbdReconnectHelper: defaultReconnectHelper(),
    defaultFsType: 'ext4',
    blockMetadataType: 'VARIABLE_LENGTH',
    maxOverprovisionRatio: 10,
    defaultVolumeBytes: 1 * GiB,
    minVolumeBytes: 1024 * 1024,
    maxVolumeBytes: 16 * 1024 * GiB,
    defaultMaxResults: 256,
    metricsListen: '',
    advertiseGetSnapshot: false,
    ...overrides,
  };
}

export function runsController(config: DriverConfig): boolean {
  return config.role !== 'node';
}

export function runsNode(config: DriverConfig): boolean {
  return config.role !== 'controller';
}

export interface Capabilities {
  plugin: PluginCapability[];
  controller: ControllerServiceCapability[];
  node: NodeServiceCapability[];
}

/** What the driver advertises, from configuration. */
export function capabilitiesOf(config: DriverConfig): Capabilities {
  const plugin: Capabilities['plugin'] = [];
  if (runsController(config)) {
    plugin.push({ service: { type: 'CONTROLLER_SERVICE' } });
    plugin.push({ service: { type: 'SNAPSHOT_METADATA_SERVICE' } });
  }
  plugin.push({ service: { type: 'VOLUME_ACCESSIBILITY_CONSTRAINTS' } });
  plugin.push({ volume_expansion: { type: 'ONLINE' } }, { volume_expansion: { type: 'OFFLINE' } });
  const controller: ControllerRpc[] = runsController(config)
    ? [
        'CREATE_DELETE_VOLUME',
        'PUBLISH_UNPUBLISH_VOLUME',
        'LIST_VOLUMES',
        'GET_CAPACITY',
        'CREATE_DELETE_SNAPSHOT',
        'LIST_SNAPSHOTS',
        'CLONE_VOLUME',
        'PUBLISH_READONLY',
        'EXPAND_VOLUME',
        'LIST_VOLUMES_PUBLISHED_NODES',
        'VOLUME_CONDITION',
        'GET_VOLUME',
      ]
    : [];
  if (runsController(config) && config.advertiseGetSnapshot) controller.push('GET_SNAPSHOT');
  const node: NodeRpc[] = runsNode(config)
    ? ['STAGE_UNSTAGE_VOLUME', 'GET_VOLUME_STATS', 'EXPAND_VOLUME', 'VOLUME_CONDITION']
    : [];
  return {
    plugin,
    controller: controller.map((type) => ({ rpc: { type } })),
    node: node.map((type) => ({ rpc: { type } })),
  };
}
