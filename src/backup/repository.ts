// The backup repository: a directory of manifests and content-addressed chunks.
//
//   repository.json        format, version (2; 1 is still read), chunk grid size
//   lock                   held by the one writer (create, delete): pid, host, command, since
//   backups/<id>.json      one manifest per backup, written last
//   packs/<id>.pack        chunks, many per file (see pack.ts), each named by its SHA-256
//   chunks/<aa>/<sha256>   version 1: one file per chunk (read, never written any more)
//   tmp/                   files being written; renamed into place only once they are synced
//
// Every file is written to tmp/, fsynced, renamed, and its directory fsynced, so a crash or a
// full disk leaves either the old state or the new one. A manifest is written only after all
// its chunks are durable, so every manifest that exists refers to chunks that exist.
// Beside this file: the lock (repository-lock.ts), chunk naming and compression (chunk-codec.ts),
// reading chunks back (chunk-read.ts), packs (pack.ts, pack-writer.ts).
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fsyncDirAsync, writeFileAtomicAsync } from '../util/atomic-file';
import { type ChunkLocation, readChunkAt, readRecordBytes } from './chunk-read';
import { type Codec, sha256 } from './chunk-codec';
import { type PackEntry, parseRecordHeader, RECORD_HEADER_BYTES, readPackIndex } from './pack';
import { PackWriter, type SealedPack } from './pack-writer';
import { ChunkError, RepositoryError } from './repository-errors';
import { type RepositoryLock, takeLock } from './repository-lock';

export const REPOSITORY_FORMAT = 'thinpool-backup-repository';
export const MANIFEST_FORMAT = 'thinpool-backup';
export const DEFAULT_CHUNK_BYTES = 1024 * 1024;
/** Version 2 stores chunks in packs; version 1 repositories are read and upgraded on write. */
export const REPOSITORY_VERSION = 2;

/** A chunk in a manifest: `[offset, length, sha256]`; an empty hash means the bytes are zeros. */
export type ChunkEntry = [offset: number, length: number, sha256: string];

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: 1;
  id: string;
  createdAt: string;
  toolVersion: string;
  kind: 'full' | 'incremental';
  snapshotId: string;
  sourceVolumeId: string;
  /** Backup this one is an increment on (null for a full backup) and its snapshot. */
  parent: string | null;
  baseSnapshotId: string | null;
  /** With era tracking: the era that began with the snapshot (a later `--since-era` names it). */
  era?: number;
  /** An increment of the blocks written since this era (its base snapshot may be gone). */
  sinceEra?: number;
  volumeSizeBytes: number;
  /** The chunk grid (no chunk crosses a multiple of it). */
  blockBytes: number;
  /** Ranges the SnapshotMetadata service reported (allocated, or changed since the base). */
  ranges: [offset: number, length: number][];
  chunks: ChunkEntry[];
  compression: Codec;
  stats: {
    bytesRead: number;
    bytesStored: number;
    zeroBytes: number;
    chunksNew: number;
    chunksReused: number;
    durationMs: number;
  };
}

export interface RepositoryConfig {
  format: typeof REPOSITORY_FORMAT;
  version: 1 | 2;
  chunkBytes: number;
  createdAt: string;
}

/** Backup ids sort by creation time: 20261122T050312Z-3fa9c1. */
export function newBackupId(now = new Date()): string {
  const stamp = now
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
  return `${stamp}-${randomBytes(3).toString('hex')}`;
}

async function readdirIfAny(dir: string): Promise<string[]> {
  try {
    return await fsp.readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

export interface VerifyProblem {
  backup: string;
  problem: 'missing-parent' | 'missing-chunk' | 'corrupt-chunk' | 'bad-manifest';
  detail: string;
  chunk?: string;
  file?: string;
}

export interface VerifyReport {
  backups: number;
  chunksChecked: number;
  bytesChecked: number;
  problems: VerifyProblem[];
  /** Chunk files no manifest refers to (left by an interrupted backup; `delete` sweeps them). */
  orphanChunks: number;
}

export class Repository {
  /** hash → location of every stored chunk; loaded on first use, kept up to date by this process. */
  private index: Map<string, ChunkLocation> | undefined;
  /** Packs whose header could not be read, with the reason. */
  readonly unreadablePacks: string[] = [];

  private constructor(
    readonly dir: string,
    public config: RepositoryConfig,
  ) {}

  /** Opens a repository; with `create`, makes it first if the directory holds none. */
  static async open(
    dir: string,
    options: { create?: boolean; chunkBytes?: number } = {},
  ): Promise<Repository> {
    const file = path.join(dir, 'repository.json');
    if (!fs.existsSync(file)) {
      if (!options.create)
        throw new RepositoryError(`${dir} is not a backup repository (no repository.json)`);
      const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
      if (chunkBytes < 4096 || chunkBytes > 32 * 1024 * 1024 || chunkBytes % 4096)
        throw new RepositoryError('the chunk size must be a multiple of 4 KiB between 4 KiB and 32 MiB');
      for (const sub of ['', 'backups', 'packs', 'tmp'])
        await fsp.mkdir(path.join(dir, sub), { recursive: true });
      const config: RepositoryConfig = {
        format: REPOSITORY_FORMAT,
        version: REPOSITORY_VERSION,
        chunkBytes,
        createdAt: new Date().toISOString(),
      };
      try {
        await writeFileAtomicAsync(file, JSON.stringify(config, null, 2) + '\n', path.join(dir, 'tmp'));
      } catch (e) {
        if (!fs.existsSync(file)) throw e;
      }
    }
    const config = JSON.parse(await fsp.readFile(file, 'utf8')) as RepositoryConfig;
    if (config.format !== REPOSITORY_FORMAT || (config.version !== 1 && config.version !== 2))
      throw new RepositoryError(`${file}: unknown repository format ${config.format} v${config.version}`);
    return new Repository(dir, config);
  }

  /**
   * Makes a version 1 repository a version 2 one before packs go into it (its chunk files stay
   * readable), so an older tool refuses it instead of missing chunks. Call with the lock held.
   */
  async upgradeForWriting(): Promise<void> {
    if (this.config.version === REPOSITORY_VERSION) return;
    await fsp.mkdir(this.packsDir, { recursive: true });
    await fsyncDirAsync(this.dir);
    const config: RepositoryConfig = { ...this.config, version: REPOSITORY_VERSION };
    const file = path.join(this.dir, 'repository.json');
    await writeFileAtomicAsync(file, JSON.stringify(config, null, 2) + '\n', this.tmpDir);
    this.config = config;
  }

  get tmpDir(): string {
    return path.join(this.dir, 'tmp');
  }

  private get lockFile(): string {
    return path.join(this.dir, 'lock');
  }

  /** Takes the writer lock (see repository-lock.ts). */
  async lock(command: string): Promise<RepositoryLock> {
    const lock = await takeLock(this.lockFile, this.dir, command);
    // We are the only writer: whatever is in tmp/ is debris from an interrupted run.
    for (const f of await fsp.readdir(this.tmpDir)) await fsp.rm(path.join(this.tmpDir, f), { force: true });
    return lock;
  }

  get packsDir(): string {
    return path.join(this.dir, 'packs');
  }

  /** Where a version 1 repository kept a chunk of its own. */
  chunkPath(hash: string): string {
    return path.join(this.dir, 'chunks', hash.slice(0, 2), hash);
  }

  /** Reads every pack index (and lists version 1 chunk files) once. */
  async loadIndex(): Promise<Map<string, ChunkLocation>> {
    if (this.index) return this.index;
    const index = new Map<string, ChunkLocation>();
    for (const hash of await this.chunkFiles()) index.set(hash, { file: this.chunkPath(hash) });
    const packs = (await readdirIfAny(this.packsDir)).filter((f) => f.endsWith('.pack'));
    let next = 0;
    const worker = async () => {
      while (next < packs.length) {
        const pack = path.join(this.packsDir, packs[next++]);
        try {
          for (const entry of await readPackIndex(pack)) index.set(entry.hash, { pack, entry });
        } catch (e) {
          // Its chunks count as missing: verify names them, restore refuses what needs them.
          this.unreadablePacks.push(`${pack} (${(e as Error).message})`);
        }
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
    this.index = index;
    return index;
  }

  async hasChunk(hash: string): Promise<boolean> {
    return (await this.loadIndex()).has(hash);
  }

  /** The file (and, for a pack, the byte range) that holds a chunk; undefined if none does. */
  async locateChunk(hash: string): Promise<{ file: string; offset: number; length: number } | undefined> {
    const at = (await this.loadIndex()).get(hash);
    if (!at) return undefined;
    if ('file' in at) return { file: at.file, offset: 0, length: (await fsp.stat(at.file)).size };
    return { file: at.pack, offset: at.entry.offset, length: RECORD_HEADER_BYTES + at.entry.storedBytes };
  }

  /** A new pack in tmp/, for `ChunkWriter`. */
  newPack(): Promise<PackWriter> {
    return PackWriter.create(this.tmpDir, this.packsDir);
  }

  /** Makes a sealed pack's chunks visible to this process (its directory is synced by the caller). */
  addPack(sealed: SealedPack): void {
    if (!this.index) throw new Error('addPack before loadIndex');
    for (const entry of sealed.entries) this.index.set(entry.hash, { pack: sealed.file, entry });
  }

  async syncPacksDir(): Promise<void> {
    await fsyncDirAsync(this.packsDir);
  }

  /** Reads a chunk and checks it against its name; throws ChunkError otherwise. */
  async getChunk(hash: string): Promise<Buffer> {
    const at = (await this.loadIndex()).get(hash);
    if (!at) {
      const damaged = this.unreadablePacks.length ? `; unreadable: ${this.unreadablePacks.join(', ')}` : '';
      throw new ChunkError(hash, this.packsDir, 'missing', `in no pack of the repository${damaged}`);
    }
    const data = await readChunkAt(hash, at);
    if (sha256(data) !== hash)
      throw new ChunkError(hash, 'file' in at ? at.file : at.pack, 'corrupt', 'SHA-256 does not match');
    return data;
  }

  manifestPath(id: string): string {
    return path.join(this.dir, 'backups', `${id}.json`);
  }

  async writeManifest(manifest: Manifest): Promise<void> {
    await writeFileAtomicAsync(this.manifestPath(manifest.id), JSON.stringify(manifest) + '\n', this.tmpDir);
  }

  async readManifest(id: string): Promise<Manifest> {
    if (!/^[A-Za-z0-9._-]+$/.test(id)) throw new RepositoryError(`${JSON.stringify(id)} is not a backup id`);
    let text: string;
    try {
      text = await fsp.readFile(this.manifestPath(id), 'utf8');
    } catch {
      throw new RepositoryError(`backup ${id} is not in repository ${this.dir}`);
    }
    const m = JSON.parse(text) as Manifest;
    if (m.format !== MANIFEST_FORMAT || m.version !== 1 || m.id !== id)
      throw new RepositoryError(`backup ${id}: not a version 1 manifest`);
    return m;
  }

  /** All manifests, oldest first. */
  async listManifests(): Promise<Manifest[]> {
    const files = (await fsp.readdir(path.join(this.dir, 'backups'))).filter((f) => f.endsWith('.json'));
    const out = await Promise.all(files.map((f) => this.readManifest(f.slice(0, -5))));
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  }

  /** The chain ending at `id`, full backup first. */
  async chain(id: string): Promise<Manifest[]> {
    const out: Manifest[] = [];
    for (let next: string | null = id; next;) {
      const m: Manifest = await this.readManifest(next).catch(() => {
        throw new RepositoryError(
          out.length
            ? `backup ${out[0].id} depends on ${next}, which is missing: the chain is broken`
            : `backup ${next} is not in repository ${this.dir}`,
        );
      });
      if (out.some((o) => o.id === m.id)) throw new RepositoryError(`backup ${id}: the chain loops`);
      out.unshift(m);
      next = m.parent;
    }
    return out;
  }

  /** Backups whose chain includes `id` (not `id` itself), newest first. */
  dependentsOf(id: string, all: Manifest[]): Manifest[] {
    const byId = new Map(all.map((m) => [m.id, m]));
    const dependsOn = (m: Manifest): boolean => {
      for (let p = m.parent; p; p = byId.get(p)?.parent ?? null) if (p === id) return true;
      return false;
    };
    return all.filter(dependsOn).reverse();
  }

  /** Removes manifests (newest first, so a crash never leaves an incremental without its parent). */
  async deleteBackups(ids: string[]): Promise<void> {
    const all = await this.listManifests();
    const order = all.filter((m) => ids.includes(m.id)).reverse();
    for (const m of order) await fsp.rm(this.manifestPath(m.id));
    await fsyncDirAsync(path.join(this.dir, 'backups'));
  }

  /** Hashes of version 1 chunk files. */
  private async chunkFiles(): Promise<string[]> {
    const root = path.join(this.dir, 'chunks');
    const out: string[] = [];
    for (const sub of await readdirIfAny(root)) out.push(...(await readdirIfAny(path.join(root, sub))));
    return out;
  }

  /**
   * Frees what no manifest refers to: version 1 chunk files are deleted; a pack with no live
   * chunk is deleted, and one with some is rewritten with only those (the new pack is durable
   * before the old one goes, so a crash leaves at worst both). Returns chunks dropped and bytes freed.
   */
  async sweep(): Promise<{ chunks: number; bytes: number }> {
    const live = new Set<string>();
    for (const m of await this.listManifests()) for (const c of m.chunks) if (c[2]) live.add(c[2]);
    const index = await this.loadIndex();
    let chunks = 0;
    let bytes = 0;
    const byPack = new Map<string, PackEntry[]>();
    for (const [hash, at] of index) {
      if ('file' in at) {
        if (live.has(hash)) continue;
        bytes += (await fsp.stat(at.file)).size;
        await fsp.rm(at.file, { force: true });
        index.delete(hash);
        chunks++;
      } else {
        byPack.set(at.pack, [...(byPack.get(at.pack) ?? []), at.entry]);
      }
    }
    // Packs none of whose chunks the index points at hold only copies (a crash mid-sweep).
    for (const f of await readdirIfAny(this.packsDir)) {
      const pack = path.join(this.packsDir, f);
      if (f.endsWith('.pack') && !byPack.has(pack)) {
        bytes += (await fsp.stat(pack)).size;
        await fsp.rm(pack, { force: true });
      }
    }
    for (const [pack, entries] of byPack) {
      const dead = entries.filter((e) => !live.has(e.hash));
      if (!dead.length) continue;
      const before = (await fsp.stat(pack)).size;
      let after = 0;
      const keep = entries.filter((e) => live.has(e.hash));
      if (keep.length) {
        const writer = await this.newPack();
        for (const e of keep) {
          const raw = await readRecordBytes(pack, e);
          const head = parseRecordHeader(raw)!;
          await writer.append(e.hash, head.codecId, raw.subarray(RECORD_HEADER_BYTES), e.rawBytes);
        }
        const sealed = await writer.seal();
        await this.syncPacksDir();
        this.addPack(sealed);
        after = sealed.bytes;
      }
      await fsp.rm(pack, { force: true });
      for (const e of dead) index.delete(e.hash);
      chunks += dead.length;
      bytes += before - after;
    }
    await this.syncPacksDir().catch(() => undefined);
    return { chunks, bytes };
  }

  /** Checks that chains are complete and that every referenced chunk is present and intact. */
  async verify(options: { ids?: string[]; onBytes?: (n: number) => void } = {}): Promise<VerifyReport> {
    const all = await this.listManifests();
    const ids = new Set(all.map((m) => m.id));
    const selected = options.ids ? all.filter((m) => options.ids!.includes(m.id)) : all;
    const problems: VerifyProblem[] = [];
    const checked = new Map<string, VerifyProblem | null>();
    let bytesChecked = 0;
    for (const m of selected) {
      for (let p = m.parent, seen = 0; p && seen < 10_000; seen++) {
        if (!ids.has(p)) {
          problems.push({ backup: m.id, problem: 'missing-parent', detail: `parent ${p} is missing` });
          break;
        }
        p = all.find((x) => x.id === p)!.parent;
      }
      const queue = m.chunks.filter((c) => c[2]);
      let next = 0;
      const worker = async () => {
        while (next < queue.length) {
          const c = queue[next++];
          const hash = c[2];
          let result = checked.get(hash);
          if (result === undefined) {
            try {
              const data = await this.getChunk(hash);
              if (data.length !== c[1])
                throw new ChunkError(hash, this.chunkPath(hash), 'corrupt', 'wrong length');
              bytesChecked += data.length;
              options.onBytes?.(data.length);
              result = null;
            } catch (e) {
              if (!(e instanceof ChunkError)) throw e;
              result = {
                backup: m.id,
                problem: e.problem === 'missing' ? 'missing-chunk' : 'corrupt-chunk',
                detail: e.message,
                chunk: hash,
                file: e.file,
              };
            }
            checked.set(hash, result);
          }
          if (result)
            problems.push({ ...result, backup: m.id, detail: `${result.detail} (at offset ${c[0]})` });
        }
      };
      await Promise.all(Array.from({ length: 4 }, worker));
    }
    const referenced = new Set(all.flatMap((m) => m.chunks.map((c) => c[2])));
    const orphanChunks = [...(await this.loadIndex()).keys()].filter((h) => !referenced.has(h)).length;
    return { backups: selected.length, chunksChecked: checked.size, bytesChecked, problems, orphanChunks };
  }
}
