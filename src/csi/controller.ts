// Controller service: volumes and snapshots as thin devices, publishing as NBD grants.
import { logger } from '../log';
import type { DeviceInfo } from '../thin/pool';
import type { DriverConfig } from './config';
import { capabilitiesOf } from './config';
import {
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  notFound,
  outOfRange,
  resourceExhausted,
  unimplemented,
} from './errors';
import { ExportGrants, newSecret } from './exports';
import type { ControllerExpandVolumeRequest__Output } from './generated/csi/v1/ControllerExpandVolumeRequest';
import type { ControllerExpandVolumeResponse } from './generated/csi/v1/ControllerExpandVolumeResponse';
import type { ControllerGetVolumeRequest__Output } from './generated/csi/v1/ControllerGetVolumeRequest';
import type { ControllerGetVolumeResponse } from './generated/csi/v1/ControllerGetVolumeResponse';
import type { ControllerPublishVolumeRequest__Output } from './generated/csi/v1/ControllerPublishVolumeRequest';
import type { ControllerPublishVolumeResponse } from './generated/csi/v1/ControllerPublishVolumeResponse';
import type { ControllerUnpublishVolumeRequest__Output } from './generated/csi/v1/ControllerUnpublishVolumeRequest';
import type { ControllerUnpublishVolumeResponse } from './generated/csi/v1/ControllerUnpublishVolumeResponse';
import type { CreateSnapshotRequest__Output } from './generated/csi/v1/CreateSnapshotRequest';
import type { CreateSnapshotResponse } from './generated/csi/v1/CreateSnapshotResponse';
import type { CreateVolumeRequest__Output } from './generated/csi/v1/CreateVolumeRequest';
import type { CreateVolumeResponse } from './generated/csi/v1/CreateVolumeResponse';
import type { DeleteSnapshotRequest__Output } from './generated/csi/v1/DeleteSnapshotRequest';
import type { DeleteSnapshotResponse } from './generated/csi/v1/DeleteSnapshotResponse';
import type { DeleteVolumeRequest__Output } from './generated/csi/v1/DeleteVolumeRequest';
import type { DeleteVolumeResponse } from './generated/csi/v1/DeleteVolumeResponse';
import type { GetCapacityRequest__Output } from './generated/csi/v1/GetCapacityRequest';
import type { GetCapacityResponse } from './generated/csi/v1/GetCapacityResponse';
import type { GetSnapshotRequest__Output } from './generated/csi/v1/GetSnapshotRequest';
import type { GetSnapshotResponse } from './generated/csi/v1/GetSnapshotResponse';
import type { ListSnapshotsRequest__Output } from './generated/csi/v1/ListSnapshotsRequest';
import type { ListSnapshotsResponse } from './generated/csi/v1/ListSnapshotsResponse';
import type { ListVolumesRequest__Output } from './generated/csi/v1/ListVolumesRequest';
import type { ListVolumesResponse } from './generated/csi/v1/ListVolumesResponse';
import type { ValidateVolumeCapabilitiesRequest__Output } from './generated/csi/v1/ValidateVolumeCapabilitiesRequest';
import type { ValidateVolumeCapabilitiesResponse } from './generated/csi/v1/ValidateVolumeCapabilitiesResponse';
import { type OperationLocks, unary } from './handler';
import { LABEL_PARAMETERS, LABEL_SOURCE, type PublishRecord, Store } from './store';
import type {
  ControllerHandlers,
  Snapshot,
  StringMap,
  Topology,
  Volume,
  VolumeCondition,
  VolumeContentSource,
} from './types';
import {
  SINGLE_NODE_MODES,
  capabilityProblem,
  checkCapabilities,
  checkName,
  isReadOnlyMode,
  ownParameters,
  parseSnapshotParameters,
  parseVolumeParameters,
  sizeFor,
} from './validate';
import { paginate } from './paginate';

const log = logger('controller');

/** Where the pool's volumes can be reached from: the topology of the node that hosts it. */
function poolTopology(config: DriverConfig): Topology[] {
  return [{ segments: { ...config.topology } }];
}

function matchesTopology(ours: Record<string, string>, wanted: Topology): boolean {
  return Object.entries(wanted.segments).every(([k, v]) => ours[k] === v);
}

export class ControllerService {
  constructor(
    private readonly config: DriverConfig,
    private readonly store: Store,
    private readonly grants: ExportGrants,
  ) {}

  private get pool() {
    return this.store.pool;
  }

  private volumeOf(info: DeviceInfo): Volume {
    const source = info.labels[LABEL_SOURCE];
    let content_source: VolumeContentSource | null = null;
    if (source?.startsWith('snapshot:')) content_source = { snapshot: { snapshot_id: source.slice(9) } };
    else if (source?.startsWith('volume:')) content_source = { volume: { volume_id: source.slice(7) } };
    return {
      capacity_bytes: info.sizeBytes,
      volume_id: this.store.idOf(info),
      volume_context: { pool: this.store.poolName },
      content_source,
      accessible_topology: poolTopology(this.config),
    };
  }

  private snapshotOf(info: DeviceInfo): Snapshot {
    const ms = Date.parse(info.createdAt);
    return {
      size_bytes: info.sizeBytes,
      snapshot_id: this.store.idOf(info),
      source_volume_id: info.labels[LABEL_SOURCE] ?? '',
      creation_time: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 },
      ready_to_use: true,
    };
  }

  /** Pool health as a volume condition: abnormal when the pool cannot take writes. */
  condition(): VolumeCondition {
    const reason = this.pool.readOnlyBecause;
    if (reason) return { abnormal: true, message: `pool is read-only: ${reason}` };
    const s = this.pool.status();
    if (s.dataBlocksUsed >= s.dataBlocksTotal)
      return { abnormal: true, message: 'pool is out of data space' };
    return { abnormal: false, message: 'volume is healthy' };
  }

  /** The overprovisioning rule: Σ volume sizes ≤ ratio × pool data size. */
  private checkRoom(extraBytes: number, ratio = this.config.maxOverprovisionRatio): void {
    this.pool.checkWritable();
    if (this.store.freeBytes() <= 0) throw resourceExhausted('the pool has no free data blocks');
    const budget = ratio * this.store.poolBytes();
    const provisioned = this.store.provisionedBytes();
    if (provisioned + extraBytes > budget) {
      throw resourceExhausted(
        `pool cannot fit ${extraBytes} more bytes: ${provisioned} of ${Math.floor(budget)} bytes ` +
          `(${ratio}× the pool's ${this.store.poolBytes()} bytes) are provisioned`,
      );
    }
  }

  async createVolume(req: CreateVolumeRequest__Output): Promise<CreateVolumeResponse> {
    checkName(req.name);
    checkCapabilities(req.volume_capabilities);
    const params = parseVolumeParameters(req.parameters);
    const wantTopology = req.accessibility_requirements?.requisite ?? [];
    if (wantTopology.length && !wantTopology.some((t) => matchesTopology(this.config.topology, t))) {
      throw resourceExhausted('the pool is not reachable from any requisite topology');
    }
    // Resolve the content source first: NOT_FOUND for a missing one.
    let origin: DeviceInfo | undefined;
    let sourceLabel: string | undefined;
    const src = req.volume_content_source;
    if (src?.snapshot) {
      origin = this.store.findChecked('snapshot', src.snapshot.snapshot_id, 'snapshot_id');
      if (!origin) throw notFound(`snapshot ${src.snapshot.snapshot_id} does not exist`);
      sourceLabel = `snapshot:${src.snapshot.snapshot_id}`;
    } else if (src?.volume) {
      origin = this.store.findChecked('volume', src.volume.volume_id, 'volume_id');
      if (!origin) throw notFound(`volume ${src.volume.volume_id} does not exist`);
      sourceLabel = `volume:${src.volume.volume_id}`;
    }
    const paramsJson = JSON.stringify(ownParameters(req.parameters));
    const existing = this.store.byName('volume', req.name);
    if (existing) {
      const range = req.capacity_range;
      const fits =
        existing.sizeBytes >= (range?.required_bytes ?? 0) &&
        (!range?.limit_bytes || existing.sizeBytes <= range.limit_bytes);
      if (!fits)
        throw alreadyExists(
          `volume ${req.name} exists with ${existing.sizeBytes} bytes, outside the requested range`,
        );
      if ((existing.labels[LABEL_SOURCE] ?? '') !== (sourceLabel ?? ''))
        throw alreadyExists(`volume ${req.name} exists with a different content source`);
      if (existing.labels[LABEL_PARAMETERS] !== paramsJson)
        throw alreadyExists(`volume ${req.name} exists with different parameters`);
      return { volume: this.volumeOf(existing) };
    }
    const sizeBytes = sizeFor(req.capacity_range, this.config, this.pool.blockBytes, origin?.sizeBytes ?? 0);
    if (origin && req.capacity_range?.limit_bytes && req.capacity_range.limit_bytes < origin.sizeBytes)
      throw outOfRange(`the source holds ${origin.sizeBytes} bytes, more than limit_bytes`);
    const info = await this.store.deviceSet.run(async () => {
      this.checkRoom(sizeBytes, params.maxOverprovisionRatio);
      const labels = this.store.newLabels('volume', req.name, {
        [LABEL_PARAMETERS]: paramsJson,
        ...(sourceLabel ? { [LABEL_SOURCE]: sourceLabel } : {}),
      });
      const id = this.pool.nextDeviceId();
      // A content source is an O(1) thin snapshot of it, grown to the requested size.
      return origin
        ? this.pool.createSnap(id, origin.id, { sizeBytes, labels })
        : this.pool.createThin(id, sizeBytes, labels);
    });
    return { volume: this.volumeOf(info) };
  }

  async deleteVolume(req: DeleteVolumeRequest__Output): Promise<DeleteVolumeResponse> {
    const info = this.store.findChecked('volume', req.volume_id, 'volume_id');
    if (!info) return {};
    const nodes = [...this.store.publications(info).keys()];
    if (nodes.length) throw failedPrecondition(`volume is still published to ${nodes.join(', ')}`);
    await this.store.deviceSet.run(() => this.pool.deleteDevice(info.id));
    return {};
  }

  async publish(req: ControllerPublishVolumeRequest__Output): Promise<ControllerPublishVolumeResponse> {
    if (!req.volume_id) throw invalidArgument('volume_id is required');
    if (!req.node_id) throw invalidArgument('node_id is required');
    const problem = capabilityProblem(req.volume_capability);
    if (problem) throw invalidArgument(problem);
    const info = this.store.find('volume', req.volume_id);
    if (!info) throw notFound(`volume ${req.volume_id} does not exist`);
    const readonly = req.readonly || isReadOnlyMode(req.volume_capability);
    const pubs = this.store.publications(info);
    const mine = pubs.get(req.node_id);
    if (mine) {
      if (mine.readonly !== readonly)
        throw alreadyExists(
          `volume is already published to ${req.node_id} ${mine.readonly ? 'read-only' : 'read-write'}`,
        );
      return { publish_context: this.grants.grant(info, req.node_id, mine) };
    }
    const others = [...pubs.keys()];
    if (others.length && SINGLE_NODE_MODES.has(req.volume_capability!.access_mode!.mode))
      throw failedPrecondition(
        `volume is published to ${others.join(', ')} and its access mode allows one node`,
      );
    if (others.length && !readonly && [...pubs.values()].some((p) => !p.readonly))
      throw failedPrecondition('volume already has a writer on another node');
    const record: PublishRecord = { secret: newSecret(), readonly };
    const updated = await this.store.setPublication(info, req.node_id, record);
    return { publish_context: this.grants.grant(updated, req.node_id, record) };
  }

  async unpublish(req: ControllerUnpublishVolumeRequest__Output): Promise<ControllerUnpublishVolumeResponse> {
    if (!req.volume_id) throw invalidArgument('volume_id is required');
    // The spec: a volume or node that cannot be found counts as unpublished, so the sidecars'
    // retries after a delete succeed.
    const info = this.store.find('volume', req.volume_id);
    if (!info) {
      log.info('nothing to unpublish: no such volume', { volume: req.volume_id, node: req.node_id });
      return {};
    }
    const published = this.store.publications(info);
    if (req.node_id && !published.has(req.node_id))
      log.info('nothing to unpublish: not published to that node', {
        volume: req.volume_id,
        node: req.node_id,
      });
    const nodes = req.node_id ? [req.node_id] : [...published.keys()];
    for (const node of nodes) {
      await this.grants.revoke(info.id, node);
      if (published.has(node))
        await this.store.setPublication(this.pool.deviceInfo(info.id), node, undefined);
    }
    return {};
  }

  async validate(
    req: ValidateVolumeCapabilitiesRequest__Output,
  ): Promise<ValidateVolumeCapabilitiesResponse> {
    if (!req.volume_id) throw invalidArgument('volume_id is required');
    if (!req.volume_capabilities.length) throw invalidArgument('volume_capabilities is required');
    const info = this.store.find('volume', req.volume_id);
    if (!info) throw notFound(`volume ${req.volume_id} does not exist`);
    const problems = req.volume_capabilities.map(capabilityProblem).filter((p) => p !== undefined);
    if (problems.length) return { message: problems.join('; ') };
    try {
      parseVolumeParameters(req.parameters);
    } catch (e) {
      return { message: (e as Error).message };
    }
    return {
      confirmed: {
        volume_context: req.volume_context,
        volume_capabilities: req.volume_capabilities,
        parameters: req.parameters,
      },
    };
  }

  private statusOf(info: DeviceInfo) {
    return {
      published_node_ids: [...this.store.publications(info).keys()],
      volume_condition: this.condition(),
    };
  }

  async listVolumes(req: ListVolumesRequest__Output): Promise<ListVolumesResponse> {
    const { page, next } = paginate(req, (p) => this.store.list('volume', p));
    return {
      entries: page.map((d) => ({ volume: this.volumeOf(d), status: this.statusOf(d) })),
      next_token: next,
    };
  }

  async getVolume(req: ControllerGetVolumeRequest__Output): Promise<ControllerGetVolumeResponse> {
    const info = this.store.findChecked('volume', req.volume_id, 'volume_id');
    if (!info) throw notFound(`volume ${req.volume_id} does not exist`);
    return { volume: this.volumeOf(info), status: this.statusOf(info) };
  }

  async getCapacity(req: GetCapacityRequest__Output): Promise<GetCapacityResponse> {
    for (const cap of req.volume_capabilities) if (capabilityProblem(cap)) return { available_capacity: 0 };
    const params = parseVolumeParameters(req.parameters);
    if (req.accessible_topology && !matchesTopology(this.config.topology, req.accessible_topology))
      return { available_capacity: 0 };
    const ratio = params.maxOverprovisionRatio ?? this.config.maxOverprovisionRatio;
    const room =
      this.pool.readOnlyBecause || this.store.freeBytes() <= 0
        ? 0
        : Math.max(0, Math.floor(ratio * this.store.poolBytes()) - this.store.provisionedBytes());
    const available = Math.floor(room / this.pool.blockBytes) * this.pool.blockBytes;
    return {
      available_capacity: available,
      maximum_volume_size: { value: Math.min(available, this.config.maxVolumeBytes) },
      minimum_volume_size: { value: this.config.minVolumeBytes },
    };
  }

  async createSnapshot(req: CreateSnapshotRequest__Output): Promise<CreateSnapshotResponse> {
    checkName(req.name);
    if (!req.source_volume_id) throw invalidArgument('source_volume_id is required');
    parseSnapshotParameters(req.parameters);
    const existing = this.store.byName('snapshot', req.name);
    if (existing) {
      if (existing.labels[LABEL_SOURCE] !== req.source_volume_id)
        throw alreadyExists(`snapshot ${req.name} exists for another volume`);
      return { snapshot: this.snapshotOf(existing) };
    }
    const source = this.store.find('volume', req.source_volume_id);
    if (!source) throw notFound(`volume ${req.source_volume_id} does not exist`);
    const info = await this.store.deviceSet.run(async () => {
      this.pool.checkWritable();
      const labels = this.store.newLabels('snapshot', req.name, { [LABEL_SOURCE]: req.source_volume_id });
      // Flush what the volume acknowledged so the snapshot holds it (a thin snapshot is O(1)).
      await this.pool.device(source.id).flush();
      return this.pool.createSnap(this.pool.nextDeviceId(), source.id, { labels });
    });
    return { snapshot: this.snapshotOf(info) };
  }

  async deleteSnapshot(req: DeleteSnapshotRequest__Output): Promise<DeleteSnapshotResponse> {
    const info = this.store.findChecked('snapshot', req.snapshot_id, 'snapshot_id');
    if (info) await this.store.deviceSet.run(() => this.pool.deleteDevice(info.id));
    return {};
  }

  async listSnapshots(req: ListSnapshotsRequest__Output): Promise<ListSnapshotsResponse> {
    if (req.snapshot_id) {
      // One snapshot or none; an id that is not ours simply matches nothing.
      const one = this.store.find('snapshot', req.snapshot_id);
      const matches = one && (!req.source_volume_id || one.labels[LABEL_SOURCE] === req.source_volume_id);
      return { entries: matches ? [{ snapshot: this.snapshotOf(one) }] : [], next_token: '' };
    }
    const source = req.source_volume_id || undefined;
    const { page, next } = paginate(req, (p) => this.store.list('snapshot', { ...p, source }));
    return { entries: page.map((d) => ({ snapshot: this.snapshotOf(d) })), next_token: next };
  }

  async getSnapshot(req: GetSnapshotRequest__Output): Promise<GetSnapshotResponse> {
    const info = this.store.findChecked('snapshot', req.snapshot_id, 'snapshot_id');
    if (!info) throw notFound(`snapshot ${req.snapshot_id} does not exist`);
    return { snapshot: this.snapshotOf(info) };
  }

  async expand(req: ControllerExpandVolumeRequest__Output): Promise<ControllerExpandVolumeResponse> {
    if (!req.volume_id) throw invalidArgument('volume_id is required');
    if (!req.capacity_range) throw invalidArgument('capacity_range is required');
    const info = this.store.find('volume', req.volume_id);
    if (!info) throw notFound(`volume ${req.volume_id} does not exist`);
    const nodeExpansion = !req.volume_capability?.block;
    const limit = req.capacity_range.limit_bytes;
    if (limit && limit < info.sizeBytes)
      throw outOfRange(`limit_bytes ${limit} is below the volume's ${info.sizeBytes} bytes (no shrinking)`);
    if (req.capacity_range.required_bytes <= info.sizeBytes)
      return { capacity_bytes: info.sizeBytes, node_expansion_required: nodeExpansion };
    const size = sizeFor(req.capacity_range, this.config, this.pool.blockBytes);
    const grown = await this.store.deviceSet.run(async () => {
      this.checkRoom(size - info.sizeBytes, this.ratioOf(info));
      return this.pool.resizeDevice(info.id, size);
    });
    return { capacity_bytes: grown.sizeBytes, node_expansion_required: nodeExpansion };
  }

  private ratioOf(info: DeviceInfo): number | undefined {
    const params = JSON.parse(info.labels[LABEL_PARAMETERS] ?? '{}') as StringMap;
    return parseVolumeParameters(params).maxOverprovisionRatio;
  }

  /** The gRPC implementation of the Controller service. */
  handlers(locks: OperationLocks): ControllerHandlers {
    const byVolume = (volumeId: string) => (volumeId ? [`volume:${volumeId}`] : []);
    return {
      CreateVolume: unary(locks, 'CreateVolume', {
        locks: (r) => (r.name ? [`volume-name:${r.name}`] : []),
        run: (r) => this.createVolume(r),
      }),
      DeleteVolume: unary(locks, 'DeleteVolume', {
        locks: (r) => byVolume(r.volume_id),
        run: (r) => this.deleteVolume(r),
      }),
      ControllerPublishVolume: unary(locks, 'ControllerPublishVolume', {
        locks: (r) => byVolume(r.volume_id),
        run: (r) => this.publish(r),
      }),
      ControllerUnpublishVolume: unary(locks, 'ControllerUnpublishVolume', {
        locks: (r) => byVolume(r.volume_id),
        run: (r) => this.unpublish(r),
      }),
      ValidateVolumeCapabilities: unary(locks, 'ValidateVolumeCapabilities', {
        run: (r) => this.validate(r),
      }),
      ListVolumes: unary(locks, 'ListVolumes', { run: (r) => this.listVolumes(r) }),
      GetCapacity: unary(locks, 'GetCapacity', { run: (r) => this.getCapacity(r) }),
      ControllerGetCapabilities: unary(locks, 'ControllerGetCapabilities', {
        run: async () => ({ capabilities: capabilitiesOf(this.config).controller }),
      }),
      CreateSnapshot: unary(locks, 'CreateSnapshot', {
        locks: (r) => (r.name ? [`snapshot-name:${r.name}`] : []),
        run: (r) => this.createSnapshot(r),
      }),
      DeleteSnapshot: unary(locks, 'DeleteSnapshot', {
        locks: (r) => (r.snapshot_id ? [`snapshot:${r.snapshot_id}`] : []),
        run: (r) => this.deleteSnapshot(r),
      }),
      ListSnapshots: unary(locks, 'ListSnapshots', { run: (r) => this.listSnapshots(r) }),
      GetSnapshot: unary(locks, 'GetSnapshot', { run: (r) => this.getSnapshot(r) }),
      ControllerExpandVolume: unary(locks, 'ControllerExpandVolume', {
        locks: (r) => byVolume(r.volume_id),
        run: (r) => this.expand(r),
      }),
      ControllerGetVolume: unary(locks, 'ControllerGetVolume', { run: (r) => this.getVolume(r) }),
      ControllerModifyVolume: unary(locks, 'ControllerModifyVolume', {
        run: async () => {
          throw unimplemented('ControllerModifyVolume is not supported');
        },
      }),
    };
  }
}
