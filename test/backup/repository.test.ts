// Repository format, locking, chains and the restore plan, without a driver.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ChunkWriter } from '../../src/backup/chunk-writer';
import { type Codec, sha256 } from '../../src/backup/chunk-codec';
import {
  type ChunkEntry,
  type Manifest,
  MANIFEST_FORMAT,
  Repository,
  newBackupId,
} from '../../src/backup/repository';
import { RepositoryLocked } from '../../src/backup/repository-errors';
import { Coverage, cutOnGrid, mergeRanges } from '../../src/backup/ranges';
import { planRestore } from '../../src/backup/restore-plan';

const KiB = 1024;

function manifest(id: string, parent: string | null, chunks: ChunkEntry[]): Manifest {
  return {
    format: MANIFEST_FORMAT,
    version: 1,
    id,
    createdAt: new Date().toISOString(),
    toolVersion: 'test',
    kind: parent ? 'incremental' : 'full',
    snapshotId: `snap-${id}`,
    sourceVolumeId: 'vol',
    parent,
    baseSnapshotId: parent ? `snap-${parent}` : null,
    volumeSizeBytes: 4096 * KiB,
    blockBytes: 1024 * KiB,
    ranges: chunks.map((c) => [c[0], c[1]]),
    chunks,
    compression: 'none',
    stats: { bytesRead: 0, bytesStored: 0, zeroBytes: 0, chunksNew: 0, chunksReused: 0, durationMs: 0 },
  };
}

describe('ranges', () => {
  test('cutOnGrid splits at grid lines only', () => {
    expect(cutOnGrid([{ offset: 512 * KiB, length: 2048 * KiB }], 1024 * KiB)).toEqual([
      { offset: 512 * KiB, length: 512 * KiB },
      { offset: 1024 * KiB, length: 1024 * KiB },
      { offset: 2048 * KiB, length: 512 * KiB },
    ]);
    expect(cutOnGrid([{ offset: 0, length: 64 * KiB }], 1024 * KiB)).toEqual([
      { offset: 0, length: 64 * KiB },
    ]);
  });

  test('mergeRanges and Coverage', () => {
    expect(
      mergeRanges([
        { offset: 10, length: 5 },
        { offset: 0, length: 10 },
        { offset: 20, length: 1 },
      ]),
    ).toEqual([
      { offset: 0, length: 15 },
      { offset: 20, length: 1 },
    ]);
    const c = new Coverage(100);
    expect(c.claim({ offset: 10, length: 20 })).toEqual([{ offset: 10, length: 20 }]);
    expect(c.claim({ offset: 0, length: 50 })).toEqual([
      { offset: 0, length: 10 },
      { offset: 30, length: 20 },
    ]);
    expect(c.claim({ offset: 5, length: 40 })).toEqual([]);
    expect(() => c.claim({ offset: 90, length: 20 })).toThrow(RangeError);
  });

  test('planRestore: later backups win, older data shows through the gaps', () => {
    const full = manifest('a', null, [
      [0, 1024 * KiB, 'A0'],
      [1024 * KiB, 1024 * KiB, 'A1'],
    ]);
    const inc = manifest('b', 'a', [
      [256 * KiB, 64 * KiB, 'B0'],
      [1024 * KiB, 1024 * KiB, ''],
    ]);
    expect(
      planRestore([full, inc]).map((p) => [
        p.range.offset / KiB,
        p.range.length / KiB,
        p.hash,
        p.chunkOffset / KiB,
      ]),
    ).toEqual([
      [0, 256, 'A0', 0],
      [256, 64, 'B0', 0],
      [320, 704, 'A0', 320],
      [1024, 1024, '', 0],
    ]);
  });
});

describe('repository', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'backup-repo-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** Stores chunks through a ChunkWriter (packs) and makes them durable. */
  async function store(repo: Repository, chunks: Buffer[], codec: Codec = 'none', packBytes?: number) {
    const writer = await ChunkWriter.open(repo, { codec, packBytes });
    const results = await Promise.all(chunks.map((c) => writer.put(sha256(c), c)));
    await writer.finish();
    return results;
  }

  test('chunks round-trip with every codec through packs and are checked on read', async () => {
    const repo = await Repository.open(dir, { create: true });
    expect(repo.config.version).toBe(2);
    const compressible = Buffer.alloc(256 * KiB, 'abcdefgh');
    const random = randomBytes(256 * KiB);
    for (const codec of ['none', 'deflate', 'brotli'] as const) {
      for (const data of [compressible, random]) {
        const payload = Buffer.concat([data, Buffer.from(codec)]);
        const [put] = await store(repo, [payload], codec);
        if (codec !== 'none' && data === compressible)
          expect(put.storedBytes).toBeLessThan(payload.length / 10);
        else expect(put.storedBytes).toBe(payload.length + 44); // record header only: incompressible data stays raw
        expect((await repo.getChunk(sha256(payload))).equals(payload)).toBe(true);
      }
    }
    // Another process (a fresh index) finds them; nothing is left in tmp/.
    const again = await Repository.open(dir);
    const brotliPayload = Buffer.concat([compressible, Buffer.from('brotli')]);
    expect((await again.getChunk(sha256(brotliPayload))).equals(brotliPayload)).toBe(true);
    expect(fs.readdirSync(path.join(dir, 'tmp'))).toEqual([]);
    expect(fs.readdirSync(path.join(dir, 'packs')).length).toBe(6);

    // A second put of the same bytes is a reuse and writes nothing.
    const [reput] = await store(again, [random.subarray(0, 128 * KiB), random.subarray(0, 128 * KiB)]);
    expect(reput.reused).toBe(false);
    const [dup] = await store(again, [random.subarray(0, 128 * KiB)]);
    expect(dup).toEqual({ storedBytes: 0, reused: true });

    // Corruption inside a pack record is caught by the hash, naming the pack file.
    const hash = sha256(random.subarray(0, 128 * KiB));
    const where = (await again.locateChunk(hash))!;
    const bytes = fs.readFileSync(where.file);
    bytes[where.offset + where.length - 1] ^= 1;
    fs.writeFileSync(where.file, bytes);
    const fresh = await Repository.open(dir);
    await expect(fresh.getChunk(hash)).rejects.toThrow(/corrupt: SHA-256 does not match/);
    await expect(fresh.getChunk(hash)).rejects.toThrow(where.file);
    await expect(fresh.getChunk('00'.repeat(32))).rejects.toThrow(/missing/);
  });

  test('a pack whose index is damaged is still read by scanning its records', async () => {
    const repo = await Repository.open(dir, { create: true });
    const data = [randomBytes(64 * KiB), randomBytes(100 * KiB), randomBytes(4 * KiB)];
    await store(repo, data);
    const [pack] = fs.readdirSync(path.join(dir, 'packs'));
    const file = path.join(dir, 'packs', pack);
    const bytes = fs.readFileSync(file);
    bytes[bytes.length - 40] ^= 0xff; // inside the index: its checksum no longer matches
    fs.writeFileSync(file, bytes);
    const fresh = await Repository.open(dir);
    for (const d of data) expect((await fresh.getChunk(sha256(d))).equals(d)).toBe(true);

    // A pack that is not one at all: its chunks are missing, and the message says which pack.
    fs.writeFileSync(file, 'not a pack');
    const broken = await Repository.open(dir);
    await expect(broken.getChunk(sha256(data[0]))).rejects.toThrow(
      /missing.*unreadable: .*not a version 1 pack/,
    );
  });

  test('packs are sealed at the pack size, durable before finish returns', async () => {
    const repo = await Repository.open(dir, { create: true });
    const data = Array.from({ length: 10 }, () => randomBytes(100 * KiB));
    await store(repo, data, 'none', 256 * KiB);
    // Each pack closes once it passes 256 KiB: three records per pack, the last one shorter.
    expect(fs.readdirSync(path.join(dir, 'packs')).length).toBe(4);
    const fresh = await Repository.open(dir);
    for (const d of data) expect((await fresh.getChunk(sha256(d))).equals(d)).toBe(true);
  });

  test('a version 1 repository (one file per chunk) is read, and upgraded when written', async () => {
    const legacy = randomBytes(64 * KiB);
    const hash = sha256(legacy);
    fs.mkdirSync(path.join(dir, 'chunks', hash.slice(0, 2)), { recursive: true });
    fs.mkdirSync(path.join(dir, 'backups'));
    fs.mkdirSync(path.join(dir, 'tmp'));
    const header = Buffer.from([0x54, 0x50, 0x43, 0x4b, 1, 0, 0, 0]); // TPCK, v1, codec none
    fs.writeFileSync(path.join(dir, 'chunks', hash.slice(0, 2), hash), Buffer.concat([header, legacy]));
    fs.writeFileSync(
      path.join(dir, 'repository.json'),
      JSON.stringify({
        format: 'thinpool-backup-repository',
        version: 1,
        chunkBytes: 1024 * KiB,
        createdAt: 'then',
      }),
    );
    const repo = await Repository.open(dir);
    expect(repo.config.version).toBe(1);
    expect((await repo.getChunk(hash)).equals(legacy)).toBe(true);
    const fresh = randomBytes(64 * KiB);
    const [put, again] = await store(repo, [fresh, legacy]);
    expect(put.reused).toBe(false);
    expect(again.reused).toBe(true); // the old chunk file counts: not stored twice
    const reopened = await Repository.open(dir);
    expect(reopened.config.version).toBe(2);
    expect((await reopened.getChunk(sha256(fresh))).equals(fresh)).toBe(true);
    expect((await reopened.getChunk(hash)).equals(legacy)).toBe(true);
  });

  test('the lock: a clear error for a second writer, stale locks of dead processes taken over', async () => {
    const repo = await Repository.open(dir, { create: true });
    const lock = await repo.lock('backup create x');
    await expect(repo.lock('backup create y')).rejects.toThrow(RepositoryLocked);
    await expect(repo.lock('backup create y')).rejects.toThrow(
      new RegExp(`locked by backup create x \\(pid ${process.pid} on ${os.hostname()}`),
    );
    await lock.release();
    // A lock left by a process that no longer exists on this host.
    fs.writeFileSync(
      path.join(dir, 'lock'),
      JSON.stringify({ pid: 2 ** 22 + 12345, host: os.hostname(), command: 'dead', since: 'then' }),
    );
    fs.writeFileSync(path.join(dir, 'tmp', 'debris'), 'x');
    const again = await repo.lock('backup create z');
    expect(fs.readdirSync(path.join(dir, 'tmp'))).toEqual([]);
    await again.release();
    // A lock held on another host is never taken over.
    fs.writeFileSync(
      path.join(dir, 'lock'),
      JSON.stringify({ pid: 1, host: 'elsewhere', command: 'backup create', since: 'then' }),
    );
    await expect(repo.lock('backup delete')).rejects.toThrow(/on elsewhere/);
  });

  test('chains, dependents, delete and sweep, verify', async () => {
    const repo = await Repository.open(dir, { create: true, chunkBytes: 1024 * KiB });
    const data = [randomBytes(1024 * KiB), randomBytes(64 * KiB), randomBytes(64 * KiB)];
    const hashes = data.map(sha256);
    await store(repo, data);
    const a = manifest(newBackupId(), null, [[0, 1024 * KiB, hashes[0]]]);
    const b = manifest(`${a.id}-b`, a.id, [[0, 64 * KiB, hashes[1]]]);
    const c = manifest(`${a.id}-c`, b.id, [[64 * KiB, 64 * KiB, hashes[2]]]);
    for (const m of [a, b, c]) await repo.writeManifest(m);
    expect((await repo.chain(c.id)).map((m) => m.id)).toEqual([a.id, b.id, c.id]);
    expect(repo.dependentsOf(a.id, await repo.listManifests()).map((m) => m.id)).toEqual([c.id, b.id]);
    expect((await repo.verify()).problems).toEqual([]);

    await repo.deleteBackups([c.id]);
    // The pack is rewritten without the dead chunk: its record (header + payload) is freed.
    expect(await repo.sweep()).toEqual({ chunks: 1, bytes: 64 * KiB + 44 + 48 });
    await repo.deleteBackups([b.id]);
    expect((await repo.sweep()).chunks).toBe(1);
    const report = await repo.verify();
    expect(report).toMatchObject({ backups: 1, chunksChecked: 1, problems: [], orphanChunks: 0 });
    // What is left reads back from the rewritten pack, in a fresh process view too.
    expect((await (await Repository.open(dir)).getChunk(hashes[0])).equals(data[0])).toBe(true);
    expect(fs.readdirSync(path.join(dir, 'packs')).length).toBe(1);

    // A manifest whose parent is gone is reported, and its chain refused.
    await repo.writeManifest(manifest('orphan', 'gone', []));
    expect((await repo.verify()).problems).toMatchObject([{ backup: 'orphan', problem: 'missing-parent' }]);
    await expect(repo.chain('orphan')).rejects.toThrow(/depends on gone, which is missing/);
  });

  test('opening a directory that is not a repository fails clearly', async () => {
    await expect(Repository.open(dir)).rejects.toThrow(/not a backup repository/);
    await expect(Repository.open(dir, { create: true, chunkBytes: 1000 })).rejects.toThrow(/chunk size/);
  });
});
