// `backup create`: the Kubernetes way of reading a snapshot. Ask the SnapshotMetadata service
// which ranges to copy (allocated, or changed since the base), make a temporary volume from the
// snapshot (O(1) in this driver), publish it read-only to our own node id, read the ranges over
// NBD with several connections, store the chunks, then write the manifest. The temporary volume
// is unpublished and deleted whatever happens.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import { logger } from '../log';
import { CsiClient, packageFile } from './csi-client';
import { NbdConnectionPool, parseNbdEndpoint } from './nbd-client';
import { type Progress, silentProgress } from './progress';
import { type ByteRange, cutOnGrid, totalBytes } from './ranges';
import {
  type ChunkEntry,
  type Codec,
  type Manifest,
  MANIFEST_FORMAT,
  Repository,
  newBackupId,
  sha256,
} from './repository';

const log = logger('backup');

export const TOOL_VERSION: string = (() => {
  try {
    const file = packageFile('package.json');
    return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
})();

export interface CreateOptions {
  driver: string;
  snapshotId: string;
  baseSnapshotId?: string;
  repoDir: string;
  /** The node id the temporary volume is published to (default backup-<hostname>). */
  nodeId?: string;
  /** NBD connections to the export (default 4). */
  connections?: number;
  /** Chunks being read or stored at once (default 16). */
  parallel?: number;
  compression?: Codec;
  /** Chunk grid of a new repository. */
  chunkBytes?: number;
  progress?: Progress;
  signal?: AbortSignal;
}

export interface CreateSummary {
  backupId: string;
  kind: 'full' | 'incremental';
  parent: string | null;
  snapshotId: string;
  volumeSizeBytes: number;
  ranges: number;
  rangeBytes: number;
  /** Bytes asked of the NBD export, and data bytes that came back (holes excluded). */
  bytesRead: number;
  bytesReceived: number;
  bytesStored: number;
  zeroBytes: number;
  chunksNew: number;
  chunksReused: number;
  durationMs: number;
  bytesPerSecond: number;
}

export function defaultNodeId(): string {
  return `backup-${os.hostname()}`;
}

/** The same temporary volume name for a rerun of the same backup: a killed run's leftovers are reused. */
function tempVolumeName(repoDir: string, nodeId: string, snapshotId: string): string {
  const real = fs.realpathSync(repoDir);
  const key = createHash('sha256').update(`${nodeId}\0${real}\0${snapshotId}`).digest('hex').slice(0, 20);
  return `thinpool-backup-${key}`;
}

export class AbortedError extends Error {
  constructor() {
    super('interrupted');
    this.name = 'AbortedError';
  }
}

/**
 * A temporary volume made from a snapshot and published to `nodeId`; `fn` gets an NBD pool on it.
 * Unpublish and delete run whatever `fn` does.
 */
export async function withSnapshotVolume<T>(
  csi: CsiClient,
  params: { snapshotId: string; sizeBytes: number; name: string; nodeId: string; connections: number },
  fn: (pool: NbdConnectionPool) => Promise<T>,
): Promise<T> {
  const volume = await csi.createVolume({
    name: params.name,
    sizeBytes: params.sizeBytes,
    fromSnapshot: params.snapshotId,
    readOnly: true,
  });
  try {
    const grant = await csi.publish(volume.volumeId, params.nodeId, true);
    try {
      const pool = await NbdConnectionPool.open(
        parseNbdEndpoint(grant.endpoint),
        grant.exportName,
        params.connections,
      );
      try {
        return await fn(pool);
      } finally {
        await pool.close().catch(() => pool.destroy());
      }
    } finally {
      await csi
        .unpublish(volume.volumeId, params.nodeId)
        .catch((e: Error) =>
          log.warn('could not unpublish the temporary volume', { volume: volume.volumeId, error: e.message }),
        );
    }
  } finally {
    await csi
      .deleteVolume(volume.volumeId)
      .catch((e: Error) =>
        log.warn('could not delete the temporary volume', { volume: volume.volumeId, error: e.message }),
      );
  }
}

/** Runs `worker` on items with `parallel` at a time, stopping at the first failure or abort. */
export async function forEachParallel<T>(
  items: T[],
  parallel: number,
  signal: AbortSignal | undefined,
  worker: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failed = false;
  const run = async () => {
    while (!failed && next < items.length) {
      if (signal?.aborted) throw new AbortedError();
      const item = items[next++];
      try {
        await worker(item);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: Math.max(1, parallel) }, run));
  const failure = results.find((r) => r.status === 'rejected');
  if (failure) throw (failure as PromiseRejectedResult).reason;
}

export async function createBackup(options: CreateOptions): Promise<CreateSummary> {
  const started = performance.now();
  const progress = options.progress ?? silentProgress;
  const nodeId = options.nodeId ?? defaultNodeId();
  const codec = options.compression ?? 'none';
  const repo = await Repository.open(options.repoDir, { create: true, chunkBytes: options.chunkBytes });
  const lock = await repo.lock(`backup create ${options.snapshotId}`);
  const csi = new CsiClient(options.driver);
  try {
    let parent: Manifest | undefined;
    if (options.baseSnapshotId) {
      const all = await repo.listManifests();
      parent = all.reverse().find((m) => m.snapshotId === options.baseSnapshotId);
      if (!parent)
        throw new Error(
          `the base snapshot ${options.baseSnapshotId} has no backup in ${options.repoDir}: back it up first`,
        );
    }
    const snapshot = await csi.getSnapshot(options.snapshotId);
    if (parent && parent.sourceVolumeId && snapshot.sourceVolumeId !== parent.sourceVolumeId)
      throw new Error(
        `snapshot ${options.snapshotId} is of volume ${snapshot.sourceVolumeId}, the base of ${parent.sourceVolumeId}`,
      );
    const metadata = await csi.metadataRanges(options.snapshotId, options.baseSnapshotId);
    const ranges = metadata.ranges;
    const chunkBytes = repo.config.chunkBytes;
    const pieces = cutOnGrid(ranges, chunkBytes);
    const rangeBytes = totalBytes(ranges);
    log.info('backing up', {
      snapshot: options.snapshotId,
      base: options.baseSnapshotId ?? null,
      ranges: ranges.length,
      bytes: rangeBytes,
    });

    const chunks: ChunkEntry[] = new Array<ChunkEntry>(pieces.length);
    const touched = new Set<string>();
    const zero = Buffer.alloc(chunkBytes);
    let bytesStored = 0;
    let zeroBytes = 0;
    let chunksNew = 0;
    let chunksReused = 0;
    let bytesRead = 0;
    let bytesReceived = 0;

    const index = new Map<ByteRange, number>(pieces.map((p, i) => [p, i]));
    progress.start('read', rangeBytes);
    await withSnapshotVolume(
      csi,
      {
        snapshotId: options.snapshotId,
        sizeBytes: metadata.volumeCapacityBytes,
        name: tempVolumeName(options.repoDir, nodeId, options.snapshotId),
        nodeId,
        connections: options.connections ?? 4,
      },
      async (pool) => {
        if (pool.info.sizeBytes < metadata.volumeCapacityBytes)
          throw new Error(
            `the export has ${pool.info.sizeBytes} bytes, the snapshot ${metadata.volumeCapacityBytes}`,
          );
        await forEachParallel(pieces, options.parallel ?? 16, options.signal, async (piece) => {
          const { data, holeBytes } = await pool.read(piece.offset, piece.length);
          const i = index.get(piece)!;
          if (holeBytes === piece.length || data.equals(zero.subarray(0, piece.length))) {
            chunks[i] = [piece.offset, piece.length, ''];
            zeroBytes += piece.length;
          } else {
            const hash = sha256(data);
            chunks[i] = [piece.offset, piece.length, hash];
            if (await repo.hasChunk(hash)) chunksReused++;
            else {
              // (not `bytesStored += await …`: that reads the total before the await, losing updates)
              const stored = await repo.putChunk(hash, data, codec, touched);
              bytesStored += stored;
              chunksNew++;
            }
          }
          progress.add(piece.length);
        });
        bytesRead = pool.bytesRequested;
        bytesReceived = pool.bytesReceived;
      },
    );
    progress.finish();
    // Chunks are durable and in their directories before the manifest names them.
    await repo.syncChunkDirs(touched);
    const durationMs = Math.round(performance.now() - started);
    const manifest: Manifest = {
      format: MANIFEST_FORMAT,
      version: 1,
      id: newBackupId(),
      createdAt: new Date().toISOString(),
      toolVersion: TOOL_VERSION,
      kind: parent ? 'incremental' : 'full',
      snapshotId: options.snapshotId,
      sourceVolumeId: snapshot.sourceVolumeId,
      parent: parent?.id ?? null,
      baseSnapshotId: options.baseSnapshotId ?? null,
      volumeSizeBytes: metadata.volumeCapacityBytes,
      blockBytes: chunkBytes,
      ranges: ranges.map((r) => [r.offset, r.length]),
      chunks,
      compression: codec,
      stats: { bytesRead, bytesStored, zeroBytes, chunksNew, chunksReused, durationMs },
    };
    await repo.writeManifest(manifest);
    log.info('backup written', { id: manifest.id, bytesRead, bytesStored });
    return {
      backupId: manifest.id,
      kind: manifest.kind,
      parent: manifest.parent,
      snapshotId: options.snapshotId,
      volumeSizeBytes: manifest.volumeSizeBytes,
      ranges: ranges.length,
      rangeBytes,
      bytesRead,
      bytesReceived,
      bytesStored,
      zeroBytes,
      chunksNew,
      chunksReused,
      durationMs,
      bytesPerSecond: Math.round(rangeBytes / Math.max(durationMs / 1000, 1e-3)),
    };
  } finally {
    progress.finish();
    csi.close();
    await lock.release();
  }
}
