// The controller's own RPCs (proto/thinpool.proto): what a cluster user needs and CSI has no
// call for. RevertVolume returns a volume to one of its snapshots in place.
import type * as grpc from '@grpc/grpc-js';
import { logger } from '../log';
import { failedPrecondition, invalidArgument, notFound } from './errors';
import { type OperationLocks, unary } from './handler';
import { LABEL_SOURCE, type Store } from './store';

const log = logger('controller');

interface RevertVolumeRequest {
  volume_id: string;
  snapshot_id: string;
}

interface RevertVolumeResponse {
  capacity_bytes: number;
}

export class VolumeAdmin {
  constructor(private readonly store: Store) {}

  // Only an unpublished volume: a node may hold its old blocks in its page cache and its
  // filesystem mounted, and nothing here could tell it to let go.
  async revert(req: RevertVolumeRequest): Promise<RevertVolumeResponse> {
    if (!req.snapshot_id) throw invalidArgument('snapshot_id is required');
    const volume = this.store.findChecked('volume', req.volume_id, 'volume_id');
    if (!volume) throw notFound(`volume ${req.volume_id} does not exist`);
    const snapshot = this.store.find('snapshot', req.snapshot_id);
    if (!snapshot) throw notFound(`snapshot ${req.snapshot_id} does not exist`);
    if (snapshot.labels[LABEL_SOURCE] !== req.volume_id)
      throw failedPrecondition(`snapshot ${req.snapshot_id} is not a snapshot of volume ${req.volume_id}`);
    const nodes = [...this.store.publications(volume).keys()];
    if (nodes.length)
      throw failedPrecondition(
        `volume ${req.volume_id} is published to ${nodes.join(', ')}: unpublish it (stop its pods) before reverting`,
      );
    const info = await this.store.deviceSet.run(() => this.store.pool.revertDevice(volume.id, snapshot.id));
    log.info('reverted volume', { volume: req.volume_id, snapshot: req.snapshot_id });
    return { capacity_bytes: info.sizeBytes };
  }

  handlers(locks: OperationLocks): grpc.UntypedServiceImplementation {
    return {
      RevertVolume: unary<RevertVolumeRequest, RevertVolumeResponse>(locks, 'RevertVolume', {
        // The volume's lock keeps publish, unpublish and delete out for the switch.
        locks: (r) => [
          ...(r.volume_id ? [`volume:${r.volume_id}`] : []),
          ...(r.snapshot_id ? [`snapshot:${r.snapshot_id}`] : []),
        ],
        run: (r) => this.revert(r),
      }),
    };
  }
}
