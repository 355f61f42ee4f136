// `backup restore`: lay a chain (full backup, then each incremental; later ones win) onto a new
// volume created through CSI and written over NBD, or onto a sparse image file. The chain is
// verified before anything is written, so a damaged chain is refused rather than half restored;
// what was written is read back and compared with the chunk checksums at the end.
import { createHash } from 'node:crypto';
import fsp from 'node:fs/promises';
import { logger } from '../log';
import { AbortedError, defaultNodeId, forEachParallel } from './create';
import { type PlannedPiece, planRestore } from './restore-plan';
import { CsiClient } from './csi-client';
import { NbdConnectionPool, parseNbdEndpoint } from '../nbd/client';
import { type Progress, silentProgress } from './progress';
import { Repository } from './repository';

const log = logger('backup');

export type RestoreTarget =
  { kind: 'volume'; driver: string; volumeName: string } | { kind: 'file'; path: string };

export interface RestoreOptions {
  repoDir: string;
  backupId: string;
  target: RestoreTarget;
  nodeId?: string;
  connections?: number;
  parallel?: number;
  /** Overwrite an existing --to-file image. */
  force?: boolean;
  progress?: Progress;
  signal?: AbortSignal;
}

export interface RestoreSummary {
  backupId: string;
  chain: string[];
  target: string;
  volumeId?: string;
  volumeSizeBytes: number;
  pieces: number;
  bytesWritten: number;
  /** Zero pieces on a blank target need no write. */
  zeroBytesSkipped: number;
  bytesVerified: number;
  durationMs: number;
  bytesPerSecond: number;
}

export class RestoreRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RestoreRefused';
  }
}

/** Random-access writes and reads to the target, whichever it is. */
interface TargetIo {
  write(offset: number, data: Buffer): Promise<void>;
  read(offset: number, length: number): Promise<Buffer>;
  flush(): Promise<void>;
}

function digest(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function restoreBackup(options: RestoreOptions): Promise<RestoreSummary> {
  const started = performance.now();
  const progress = options.progress ?? silentProgress;
  const repo = await Repository.open(options.repoDir);
  const chain = await repo.chain(options.backupId);
  const last = chain[chain.length - 1];

  // Refuse a damaged chain before touching any target.
  progress.start(
    'check',
    chain.reduce((s, m) => s + m.chunks.reduce((t, c) => t + (c[2] ? c[1] : 0), 0), 0),
  );
  const report = await repo.verify({
    ids: chain.map((m) => m.id),
    onBytes: (n) => progress.add(n),
  });
  if (report.problems.length) {
    const lines = report.problems.map((p) => `  ${p.backup}: ${p.detail}`).join('\n');
    throw new RestoreRefused(
      `backup ${options.backupId}: the chain does not verify, nothing restored:\n${lines}`,
    );
  }
  progress.finish();
  const plan = planRestore(chain);
  const dataPieces = plan.filter((p) => p.hash);
  const writeBytes = dataPieces.reduce((s, p) => s + p.range.length, 0);
  const zeroBytesSkipped = plan.reduce((s, p) => s + (p.hash ? 0 : p.range.length), 0);
  const expected = new Map<PlannedPiece, string>();

  const copy = async (io: TargetIo): Promise<number> => {
    progress.start('write', writeBytes);
    await forEachParallel(dataPieces, options.parallel ?? 8, options.signal, async (piece) => {
      const chunk = await repo.getChunk(piece.hash);
      const data = chunk.subarray(piece.chunkOffset, piece.chunkOffset + piece.range.length);
      expected.set(piece, digest(data));
      await io.write(piece.range.offset, data);
      progress.add(data.length);
    });
    await io.flush();
    progress.finish();
    // Read back everything the plan says, zeros included, and compare.
    progress.start(
      'verify',
      plan.reduce((s, p) => s + p.range.length, 0),
    );
    let verified = 0;
    await forEachParallel(plan, options.parallel ?? 8, options.signal, async (piece) => {
      const back = await io.read(piece.range.offset, piece.range.length);
      const ok = piece.hash ? digest(back) === expected.get(piece) : back.every((b) => b === 0);
      if (!ok)
        throw new Error(
          `restored data at offset ${piece.range.offset} (+${piece.range.length}) does not match the backup`,
        );
      verified += back.length;
      progress.add(back.length);
    });
    progress.finish();
    return verified;
  };

  let bytesVerified = 0;
  let volumeId: string | undefined;
  let targetName: string;
  if (options.target.kind === 'file') {
    targetName = options.target.path;
    bytesVerified = await restoreToFile(
      options.target.path,
      last.volumeSizeBytes,
      options.force === true,
      copy,
    );
  } else {
    targetName = `volume ${options.target.volumeName}`;
    const result = await restoreToVolume(options.target, last.volumeSizeBytes, options, copy);
    bytesVerified = result.verified;
    volumeId = result.volumeId;
  }
  const durationMs = Math.round(performance.now() - started);
  log.info('restore done', { backup: last.id, target: targetName, bytes: writeBytes });
  return {
    backupId: last.id,
    chain: chain.map((m) => m.id),
    target: targetName,
    ...(volumeId ? { volumeId } : {}),
    volumeSizeBytes: last.volumeSizeBytes,
    pieces: plan.length,
    bytesWritten: writeBytes,
    zeroBytesSkipped,
    bytesVerified,
    durationMs,
    bytesPerSecond: Math.round(writeBytes / Math.max(durationMs / 1000, 1e-3)),
  };
}

async function restoreToFile(
  file: string,
  sizeBytes: number,
  force: boolean,
  copy: (io: TargetIo) => Promise<number>,
): Promise<number> {
  // A fresh sparse file: untouched ranges are holes that read as zeros.
  const tmp = `${file}.partial`;
  await fsp.rm(tmp, { force: true });
  if (!force) {
    try {
      await fsp.access(file);
      throw new RestoreRefused(`${file} exists (use --force to replace it)`);
    } catch (e) {
      if (e instanceof RestoreRefused) throw e;
    }
  }
  const handle = await fsp.open(tmp, 'wx+');
  try {
    await handle.truncate(sizeBytes);
    const verified = await copy({
      write: async (offset, data) => {
        await handle.write(data, 0, data.length, offset);
      },
      read: async (offset, length) => {
        const out = Buffer.alloc(length);
        await handle.read(out, 0, length, offset);
        return out;
      },
      flush: () => handle.sync(),
    });
    await handle.close();
    await fsp.rename(tmp, file);
    return verified;
  } catch (e) {
    await handle.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true });
    throw e;
  }
}

async function restoreToVolume(
  target: { driver: string; volumeName: string },
  sizeBytes: number,
  options: RestoreOptions,
  copy: (io: TargetIo) => Promise<number>,
): Promise<{ volumeId: string; verified: number }> {
  const nodeId = options.nodeId ?? defaultNodeId();
  const csi = new CsiClient(target.driver);
  let volumeId: string | undefined;
  let ours = false;
  let done = false;
  try {
    const volume = await csi.createVolume({ name: target.volumeName, sizeBytes, readOnly: false });
    volumeId = volume.volumeId;
    if (volume.capacityBytes < sizeBytes)
      throw new RestoreRefused(
        `volume ${target.volumeName} has ${volume.capacityBytes} bytes, the backup ${sizeBytes}`,
      );
    const grant = await csi.publish(volume.volumeId, nodeId, false);
    try {
      const pool = await NbdConnectionPool.open(
        parseNbdEndpoint(grant.endpoint),
        grant.exportName,
        options.connections ?? 4,
        {
          metaContexts: ['base:allocation'],
        },
      );
      try {
        // CreateVolume returns an existing volume of the same name: never write over data.
        await checkBlank(pool, target.volumeName);
        ours = true;
        const verified = await copy({
          write: (offset, data) => pool.write(offset, data),
          read: async (offset, length) => (await pool.read(offset, length)).data,
          flush: () => pool.flush(),
        });
        done = true;
        return { volumeId: volume.volumeId, verified };
      } finally {
        await pool.close().catch(() => pool.destroy());
      }
    } finally {
      await csi
        .unpublish(volume.volumeId, nodeId)
        .catch((e: Error) =>
          log.warn('could not unpublish the restored volume', { volume: volume.volumeId, error: e.message }),
        );
    }
  } finally {
    if (!done && ours && volumeId) {
      // A half-written volume is worse than none.
      await csi
        .deleteVolume(volumeId)
        .catch((e: Error) =>
          log.warn('could not delete the partly restored volume', { volume: volumeId, error: e.message }),
        );
    }
    csi.close();
  }
}

/** Refuses a target with any allocated block (per base:allocation). */
async function checkBlank(pool: NbdConnectionPool, name: string): Promise<void> {
  const client = pool.clients[0];
  const size = client.info.sizeBytes;
  for (let offset = 0; offset < size;) {
    const length = Math.min(size - offset, 1 << 30);
    const extents = await client.blockStatus(offset, length);
    if (!extents.length) throw new Error('BLOCK_STATUS returned no extents');
    for (const e of extents) {
      if (!(e.flags & 1))
        throw new RestoreRefused(
          `volume ${name} already holds data (at offset ${offset}): restore needs a new volume`,
        );
      offset += e.length;
      if (offset >= size) break;
    }
  }
}

export { AbortedError };
