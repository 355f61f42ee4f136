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
import { NbdConnectionPool, parseNbdEndpoint } from '../nbd/client';
import { ChunkWriter } from './chunk-writer';
import { HashPool } from './hash-pool';
import { type Progress, silentProgress } from './progress';
import {
  type ByteRange,
  type ReadRequest,
  cutOnGrid,
  groupReads,
  mergeRanges,
  subtractRanges,
  totalBytes,
} from './ranges';
import { planRestore } from './restore-plan';
import type { Codec } from './chunk-codec';
import { type ChunkEntry, type Manifest, MANIFEST_FORMAT, Repository, newBackupId } from './repository';

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
  /**
   * Back up only the blocks written in this era or later (era tracking; no base snapshot
   * needed): the increment is on the newest backup of the volume whose snapshot's era is this
   * one or later.
   */
  sinceEra?: number;
  repoDir: string;
  /** The node id the temporary volume is published to (default backup-<hostname>). */
  nodeId?: string;
  /** NBD connections to the export (default 4). */
  connections?: number;
  /** NBD reads in flight, each with its buffer (default: ~32 MiB worth, 16…128). */
  parallel?: number;
  /** Threads hashing chunks (default 1 on a machine with up to 2 CPUs, else 2; 0: the main thread). */
  hashThreads?: number;
  /** Size at which a pack is sealed and a new one started (default 32 MiB). */
  packBytes?: number;
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
  /** Where the time went: CSI calls and connections before the first read, reading and storing, the rest. */
  phases: { setupMs: number; copyMs: number; finishMs: number };
}

/** Chunks that touch are read together up to this size (or the chunk size, if larger). */
const READ_BYTES = 1024 * 1024;

function defaultHashThreads(): number {
  return os.availableParallelism() <= 2 ? 1 : 2;
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

/**
 * Runs `worker` on items with `parallel` at a time, stopping at the first failure or abort. Each
 * of the `parallel` lanes has a number (0…parallel-1) the worker may use to own a buffer.
 */
export async function forEachParallel<T>(
  items: T[],
  parallel: number,
  signal: AbortSignal | undefined,
  worker: (item: T, lane: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failed = false;
  const run = async (lane: number) => {
    while (!failed && next < items.length) {
      if (signal?.aborted) throw new AbortedError();
      const item = items[next++];
      try {
        await worker(item, lane);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const results = await Promise.allSettled(
    Array.from({ length: Math.max(1, parallel) }, (_, lane) => run(lane)),
  );
  const failure = results.find((r) => r.status === 'rejected');
  if (failure) throw (failure as PromiseRejectedResult).reason;
}

/** Requests in flight: enough to cover ~32 MiB (the read buffers), between 16 and 128. */
function defaultParallel(reads: ReadRequest[]): number {
  const average = reads.length ? totalBytes(reads) / reads.length : 1;
  return Math.max(16, Math.min(128, Math.round((32 * 1024 * 1024) / average)));
}

export async function createBackup(options: CreateOptions): Promise<CreateSummary> {
  const started = performance.now();
  const progress = options.progress ?? silentProgress;
  const nodeId = options.nodeId ?? defaultNodeId();
  const codec = options.compression ?? 'none';
  const repo = await Repository.open(options.repoDir, { create: true, chunkBytes: options.chunkBytes });
  const lock = await repo.lock(`backup create ${options.snapshotId}`);
  const csi = new CsiClient(options.driver);
  if (options.baseSnapshotId && options.sinceEra !== undefined)
    throw new Error('give a base snapshot or an era to back up changes since, not both');
  // The fixed costs of a run overlap: the range listing, the snapshot lookup, the repository
  // index and the temporary volume are independent of each other.
  let metadataPromise = csi.metadataRanges(options.snapshotId, options.baseSnapshotId);
  metadataPromise.catch(() => undefined); // awaited below; not an unhandled rejection meanwhile
  let writer: ChunkWriter | undefined;
  try {
    const incremental = options.baseSnapshotId !== undefined || options.sinceEra !== undefined;
    const [snapshot, all, chunkWriter, era] = await Promise.all([
      csi.getSnapshot(options.snapshotId),
      incremental ? repo.listManifests() : Promise.resolve([]),
      ChunkWriter.open(repo, { codec, packBytes: options.packBytes }),
      csi.snapshotEra(options.snapshotId),
    ]);
    writer = chunkWriter;
    let parent: Manifest | undefined;
    if (options.sinceEra !== undefined) {
      const since = options.sinceEra;
      parent = all
        .reverse()
        .find((m) => m.sourceVolumeId === snapshot.sourceVolumeId && (m.era ?? 0) >= since);
      if (!parent)
        throw new Error(
          `no backup of volume ${snapshot.sourceVolumeId} in ${options.repoDir} was taken in era ${since} or later: ` +
            'back it up in full first',
        );
      metadataPromise = eraRanges(csi, repo, options.snapshotId, since, parent);
    } else if (options.baseSnapshotId) {
      parent = all.reverse().find((m) => m.snapshotId === options.baseSnapshotId);
      if (!parent)
        throw new Error(
          `the base snapshot ${options.baseSnapshotId} has no backup in ${options.repoDir}: back it up first`,
        );
    }
    if (parent && parent.sourceVolumeId && snapshot.sourceVolumeId !== parent.sourceVolumeId)
      throw new Error(
        `snapshot ${options.snapshotId} is of volume ${snapshot.sourceVolumeId}, the base of ${parent.sourceVolumeId}`,
      );
    const sizeBytes =
      snapshot.sizeBytes > 0 ? snapshot.sizeBytes : (await metadataPromise).volumeCapacityBytes;

    const chunkBytes = repo.config.chunkBytes;
    const stats = {
      bytesStored: 0,
      zeroBytes: 0,
      chunksNew: 0,
      chunksReused: 0,
      bytesRead: 0,
      bytesReceived: 0,
    };
    const phases = { setupMs: 0, copyMs: 0, finishMs: 0 };
    let metadata!: Awaited<typeof metadataPromise>;
    let chunks!: ChunkEntry[];
    const durable = await withSnapshotVolume(
      csi,
      {
        snapshotId: options.snapshotId,
        sizeBytes,
        name: tempVolumeName(options.repoDir, nodeId, options.snapshotId),
        nodeId,
        connections: options.connections ?? 4,
      },
      async (pool) => {
        metadata = await metadataPromise;
        if (pool.info.sizeBytes < metadata.volumeCapacityBytes)
          throw new Error(
            `the export has ${pool.info.sizeBytes} bytes, the snapshot ${metadata.volumeCapacityBytes}`,
          );
        log.info('backing up', {
          snapshot: options.snapshotId,
          base: options.baseSnapshotId ?? null,
          ranges: metadata.ranges.length,
          bytes: totalBytes(metadata.ranges),
        });
        phases.setupMs = Math.round(performance.now() - started);
        const copyStarted = performance.now();
        chunks = await copyChunks(pool, metadata.ranges, chunkBytes, chunkWriter, stats, options, progress);
        phases.copyMs = Math.round(performance.now() - copyStarted);
        // Sealing the last pack and syncing run while the temporary volume is taken down.
        const done = chunkWriter.finish();
        done.catch(() => undefined); // awaited once the volume is gone
        return { done };
      },
    );
    await durable.done;
    progress.finish();
    const ranges = metadata.ranges;
    const rangeBytes = totalBytes(ranges);
    const durationMs = Math.round(performance.now() - started);
    const { bytesRead, bytesReceived, bytesStored, zeroBytes, chunksNew, chunksReused } = stats;
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
      ...(era !== undefined ? { era } : {}),
      ...(options.sinceEra !== undefined ? { sinceEra: options.sinceEra } : {}),
      volumeSizeBytes: metadata.volumeCapacityBytes,
      blockBytes: chunkBytes,
      ranges: ranges.map((r) => [r.offset, r.length]),
      chunks,
      compression: codec,
      stats: { bytesRead, bytesStored, zeroBytes, chunksNew, chunksReused, durationMs },
    };
    // Every chunk is durable in its pack, and packs/ is synced: the manifest may name them.
    await repo.writeManifest(manifest);
    phases.finishMs = Math.round(performance.now() - started) - phases.setupMs - phases.copyMs;
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
      phases,
    };
  } catch (e) {
    await writer?.abort();
    throw e;
  } finally {
    progress.finish();
    csi.close();
    await lock.release();
  }
}

/**
 * What an increment since an era must read: the blocks written since (era tracking), and what
 * the parent chain holds that the snapshot no longer maps (reads as holes: stored as zeros).
 */
async function eraRanges(
  csi: CsiClient,
  repo: Repository,
  snapshotId: string,
  since: number,
  parent: Manifest,
): Promise<Awaited<ReturnType<CsiClient['metadataRanges']>>> {
  const [allocated, written, chain] = await Promise.all([
    csi.metadataRanges(snapshotId, undefined),
    csi.writtenSinceEra(snapshotId, since),
    repo.chain(parent.id),
  ]);
  const held = mergeRanges(
    planRestore(chain)
      .filter((p) => p.hash)
      .map((p) => p.range),
  );
  const gone = subtractRanges(held, mergeRanges(allocated.ranges));
  return { ...allocated, ranges: mergeRanges([...written.ranges, ...gone]) };
}

interface CopyStats {
  bytesStored: number;
  zeroBytes: number;
  chunksNew: number;
  chunksReused: number;
  bytesRead: number;
  bytesReceived: number;
}

/**
 * The data path: NBD reads of whole runs of chunks into per-lane slices of one shared buffer,
 * SHA-256 on worker threads, new chunks appended to packs. Each lane keeps its slice until its
 * chunks are written, so memory stays at lanes × read size whatever the volume.
 */
async function copyChunks(
  pool: NbdConnectionPool,
  ranges: ByteRange[],
  chunkBytes: number,
  writer: ChunkWriter,
  stats: CopyStats,
  options: CreateOptions,
  progress: Progress,
): Promise<ChunkEntry[]> {
  const pieces = cutOnGrid(ranges, chunkBytes);
  const readBytes = Math.max(chunkBytes, READ_BYTES);
  const reads = groupReads(pieces, readBytes);
  // One lane per request in flight, each with its own slice of the slab.
  const parallel = Math.max(1, Math.min(options.parallel ?? defaultParallel(reads), reads.length));
  const slotBytes = Math.min(readBytes, Math.max(0, ...reads.map((r) => r.length)));
  const slab = new SharedArrayBuffer(Math.max(1, slotBytes * parallel));
  const slabView = Buffer.from(slab);
  const hashes = new HashPool(slab, reads.length ? (options.hashThreads ?? defaultHashThreads()) : 0);
  const chunks: ChunkEntry[] = [];
  const firstChunk: number[] = [];
  for (const read of reads) {
    firstChunk.push(chunks.length);
    for (const p of read.pieces) chunks.push([p.offset, p.length, '']);
  }
  progress.start('read', totalBytes(ranges));
  try {
    await forEachParallel(
      reads.map((read, i) => ({ read, i })),
      parallel,
      options.signal,
      async ({ read, i }, lane) => {
        const base = lane * slotBytes;
        const buffer = slabView.subarray(base, base + read.length);
        const { holeBytes } = await pool.read(read.offset, read.length, buffer);
        const digests =
          holeBytes === read.length
            ? read.pieces.map(() => '')
            : await hashes.digest(read.pieces.map((p) => [base + p.offset - read.offset, p.length]));
        await Promise.all(
          read.pieces.map(async (p, k) => {
            const entry = chunks[firstChunk[i] + k];
            entry[2] = digests[k];
            if (!digests[k]) {
              stats.zeroBytes += p.length;
              return;
            }
            const at = p.offset - read.offset;
            const put = await writer.put(digests[k], buffer.subarray(at, at + p.length));
            if (put.reused) stats.chunksReused++;
            else {
              stats.chunksNew++;
              stats.bytesStored += put.storedBytes;
            }
          }),
        );
        progress.add(read.length);
      },
    );
  } finally {
    await hashes.close();
  }
  stats.bytesRead = pool.bytesRequested;
  stats.bytesReceived = pool.bytesReceived;
  return chunks;
}
