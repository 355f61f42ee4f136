// Era RPCs of proto/thinpool.proto: the pool's era, checkpoints, and the ranges of a volume or
// snapshot written since an era (what `backup create --since-era` reads).
import type * as grpc from '@grpc/grpc-js';
import { failedPrecondition, invalidArgument, notFound } from './errors';
import { type OperationLocks, unary } from './handler';
import type { Store } from './store';

interface WrittenRequest {
  volume_id: string;
  snapshot_id: string;
  since_era: number;
}

interface WrittenResponse {
  capacity_bytes: number;
  block_bytes: number;
  snapshot_era: number;
  ranges: { offset: number; length: number }[];
}

export class EraAdmin {
  constructor(private readonly store: Store) {}

  private requireEra() {
    const era = this.store.pool.era;
    if (!era)
      throw failedPrecondition(
        'the pool has no era tracking (stop the driver, run `thinpool pool era enable <pool>`, start it again)',
      );
    return era;
  }

  status(req: { snapshot_id: string }) {
    const pool = this.store.pool;
    const era = pool.era;
    let snapshotEra = 0;
    if (req.snapshot_id) {
      const snapshot = this.store.find('snapshot', req.snapshot_id);
      if (!snapshot) throw notFound(`snapshot ${req.snapshot_id} does not exist`);
      snapshotEra = snapshot.era ?? 0;
    }
    const s = era?.status();
    return {
      enabled: era !== undefined,
      current_era: s?.currentEra ?? 0,
      nr_blocks: s?.nrBlocks ?? 0,
      block_bytes: pool.blockBytes,
      snapshot_era: snapshotEra,
      metadata_snap_block: s?.metadataSnapBlock ?? 0,
      metadata_snap_era: s?.snapshotEra ?? 0,
    };
  }

  async takeSnapshot(): Promise<{ metadata_snap_block: number; era: number }> {
    const era = this.requireEra();
    const snap = await this.store.pool.gate.exclusive(async () => {
      if (era.status().metadataSnapBlock)
        throw failedPrecondition('an era metadata snapshot is already held: drop it first');
      return era.takeSnapshot();
    });
    return { metadata_snap_block: snap.location, era: snap.era };
  }

  async dropSnapshot(): Promise<object> {
    const era = this.requireEra();
    await this.store.pool.gate.exclusive(async () => {
      if (!era.status().metadataSnapBlock) throw failedPrecondition('no era metadata snapshot is held');
      era.dropSnapshot();
    });
    return {};
  }

  async checkpoint(): Promise<{ era: number }> {
    const era = this.requireEra();
    return { era: await this.store.pool.gate.exclusive(async () => era.checkpoint()) };
  }

  async writtenSince(req: WrittenRequest): Promise<WrittenResponse> {
    this.requireEra();
    if (!req.volume_id === !req.snapshot_id) throw invalidArgument('give one of volume_id and snapshot_id');
    if (!Number.isInteger(req.since_era) || req.since_era < 1)
      throw invalidArgument('since_era must be 1 or more');
    const device = req.volume_id
      ? this.store.findChecked('volume', req.volume_id, 'volume_id')
      : this.store.findChecked('snapshot', req.snapshot_id, 'snapshot_id');
    if (!device)
      throw notFound(
        `${req.volume_id ? 'volume' : 'snapshot'} ${req.volume_id || req.snapshot_id} does not exist`,
      );
    const bs = this.store.pool.blockBytes;
    const runs = await this.store.pool.writtenSinceEra(device.id, req.since_era);
    const capacity = device.sizeBytes;
    return {
      capacity_bytes: capacity,
      block_bytes: bs,
      snapshot_era: device.era ?? 0,
      ranges: runs.map((r) => {
        const offset = r.begin * bs;
        return { offset, length: Math.min(r.length * bs, capacity - offset) };
      }),
    };
  }

  handlers(locks: OperationLocks): grpc.UntypedServiceImplementation {
    return {
      GetEraStatus: unary<{ snapshot_id: string }, object>(locks, 'GetEraStatus', {
        run: async (r) => this.status(r),
      }),
      CheckpointEra: unary(locks, 'CheckpointEra', { run: () => this.checkpoint() }),
      TakeEraSnapshot: unary(locks, 'TakeEraSnapshot', {
        locks: () => ['era-snapshot'],
        run: () => this.takeSnapshot(),
      }),
      DropEraSnapshot: unary(locks, 'DropEraSnapshot', {
        locks: () => ['era-snapshot'],
        run: () => this.dropSnapshot(),
      }),
      GetWrittenSinceEra: unary<WrittenRequest, WrittenResponse>(locks, 'GetWrittenSinceEra', {
        run: (r) => this.writtenSince(r),
      }),
    };
  }
}
