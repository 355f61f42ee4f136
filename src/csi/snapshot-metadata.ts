// SnapshotMetadata service (changed-block tracking). Ranges come from a held metadata snapshot,
// so they form one consistent view while the pool keeps writing. Only one metadata snapshot
// can be held per pool; the pool queues its holders (`Pool.withMetadataSnap`). The ranges are
// computed under it and the snapshot is released before anything is streamed.
import type { GetMetadataAllocatedRequest__Output } from './generated/csi/v1/GetMetadataAllocatedRequest';
import type { GetMetadataAllocatedResponse } from './generated/csi/v1/GetMetadataAllocatedResponse';
import type { GetMetadataDeltaRequest__Output } from './generated/csi/v1/GetMetadataDeltaRequest';
import type { SnapshotMetadataHandlers } from './types';
import type { Pool } from '../thin/pool';
import type { DriverConfig } from './config';
import { invalidArgument, notFound, outOfRange } from './errors';
import { type OperationLocks, serverStream } from './handler';
import { LABEL_SOURCE, type Store } from './store';

export interface ByteRange {
  byte_offset: number;
  size_bytes: number;
}

/** Runs `fn` with the pool's metadata snapshot held, releasing it afterwards whatever happens. */
export function withMetadataSnap<T>(pool: Pool, fn: () => Promise<T>): Promise<T> {
  return pool.withMetadataSnap(fn);
}

/**
 * Block runs → byte ranges clipped to the capacity, dropping those that end at or before
 * `startingOffset`; FIXED_LENGTH splits them into single blocks.
 */
export function toByteRanges(
  runs: { begin: number; length: number }[],
  blockBytes: number,
  capacityBytes: number,
  startingOffset: number,
  fixed: boolean,
): ByteRange[] {
  const out: ByteRange[] = [];
  for (const run of runs) {
    const start = run.begin * blockBytes;
    const end = Math.min((run.begin + run.length) * blockBytes, capacityBytes);
    if (end <= startingOffset || end <= start) continue;
    if (!fixed) {
      const last = out[out.length - 1];
      if (last && last.byte_offset + last.size_bytes === start) last.size_bytes = end - last.byte_offset;
      else out.push({ byte_offset: start, size_bytes: end - start });
      continue;
    }
    const first = Math.max(start, Math.floor(startingOffset / blockBytes) * blockBytes);
    for (let offset = first; offset < end; offset += blockBytes) {
      out.push({ byte_offset: offset, size_bytes: blockBytes });
    }
  }
  return out;
}

type AllocatedRequest = GetMetadataAllocatedRequest__Output;
type DeltaRequest = GetMetadataDeltaRequest__Output;

export class SnapshotMetadataService {
  constructor(
    private readonly config: DriverConfig,
    private readonly store: Store,
  ) {}

  private check(offset: number, maxResults: number, capacity: number): void {
    if (offset < 0) throw invalidArgument('starting_offset must not be negative');
    if (maxResults < 0) throw invalidArgument('max_results must not be negative');
    if (offset >= capacity && !(offset === 0 && capacity === 0))
      throw outOfRange(`starting_offset ${offset} is past the end of the ${capacity}-byte snapshot`);
  }

  private snapshot(id: string, field: string) {
    const info = this.store.findChecked('snapshot', id, field);
    if (!info) throw notFound(`snapshot ${id} does not exist`);
    return info;
  }

  async allocated(req: AllocatedRequest): Promise<{ capacity: number; ranges: ByteRange[] }> {
    const info = this.snapshot(req.snapshot_id, 'snapshot_id');
    this.check(req.starting_offset, req.max_results, info.sizeBytes);
    const pool = this.store.pool;
    const runs = await withMetadataSnap(pool, () => pool.allocated(info.id, { useMetadataSnap: true }));
    const fixed = this.config.blockMetadataType === 'FIXED_LENGTH';
    return {
      capacity: info.sizeBytes,
      ranges: toByteRanges(runs, pool.blockBytes, info.sizeBytes, req.starting_offset, fixed),
    };
  }

  async delta(req: DeltaRequest): Promise<{ capacity: number; ranges: ByteRange[] }> {
    const base = this.snapshot(req.base_snapshot_id, 'base_snapshot_id');
    const target = this.snapshot(req.target_snapshot_id, 'target_snapshot_id');
    if (base.labels[LABEL_SOURCE] !== target.labels[LABEL_SOURCE])
      throw invalidArgument('base and target snapshots are of different volumes');
    this.check(req.starting_offset, req.max_results, target.sizeBytes);
    const pool = this.store.pool;
    const runs = await withMetadataSnap(pool, () =>
      pool.delta(base.id, target.id, { useMetadataSnap: true }),
    );
    const fixed = this.config.blockMetadataType === 'FIXED_LENGTH';
    return {
      capacity: target.sizeBytes,
      ranges: toByteRanges(runs, pool.blockBytes, target.sizeBytes, req.starting_offset, fixed),
    };
  }

  handlers(locks: OperationLocks): SnapshotMetadataHandlers {
    // Both RPCs answer with the same message shape: pages of at most max_results ranges.
    const stream =
      <Req extends { max_results: number }>(
        compute: (r: Req) => Promise<{ capacity: number; ranges: ByteRange[] }>,
      ) =>
      async (req: Req, send: (m: GetMetadataAllocatedResponse) => Promise<boolean>): Promise<void> => {
        const { capacity, ranges } = await compute(req);
        const per = req.max_results > 0 ? req.max_results : this.config.defaultMaxResults;
        const header = {
          block_metadata_type: this.config.blockMetadataType,
          volume_capacity_bytes: capacity,
        };
        if (ranges.length === 0) {
          await send({ ...header, block_metadata: [] });
          return;
        }
        for (let i = 0; i < ranges.length; i += per) {
          if (!(await send({ ...header, block_metadata: ranges.slice(i, i + per) }))) return;
        }
      };
    return {
      GetMetadataAllocated: serverStream(locks, 'GetMetadataAllocated', {
        run: stream((r: AllocatedRequest) => this.allocated(r)),
      }),
      GetMetadataDelta: serverStream(locks, 'GetMetadataDelta', {
        run: stream((r: DeltaRequest) => this.delta(r)),
      }),
    };
  }
}
