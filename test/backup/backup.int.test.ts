// Backup and restore end to end through the real driver: CSI on a unix socket, a real thin pool,
// NBD on loopback. Needs the built CLI (global setup builds it).
import { nbdBytes } from '../../src/metrics/nbd-metrics';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { createBackup, withSnapshotVolume } from '../../src/backup/create';
import { Repository } from '../../src/backup/repository';
import { restoreBackup } from '../../src/backup/restore';
import {
  type BackupDriver,
  MiB,
  SourceVolume,
  readVolume,
  runCli,
  spawnCli,
  startBackupDriver,
} from './helpers';

jest.setTimeout(180_000);

const VOLUME_BYTES = 64 * MiB;

describe('backup through the CSI driver', () => {
  let t: BackupDriver;
  let repoDir: string;
  let source: SourceVolume;
  const points: { snapshotId: string; content: Buffer; backupId: string }[] = [];

  beforeAll(async () => {
    t = await startBackupDriver();
    repoDir = path.join(t.dir, 'repo');
    source = await SourceVolume.create(t.csi, 'source', VOLUME_BYTES);
  });
  afterAll(async () => {
    await source.close();
    await t.close();
  });

  test('full backup and three incrementals after random writes (CLI for the full one)', async () => {
    await source.randomWrites(40, 512 * 1024);
    const s0 = await source.snapshot('snap-0');
    const full = await runCli([
      'backup',
      'create',
      '--driver',
      t.endpoint,
      '--snapshot',
      s0.id,
      '--repo',
      repoDir,
      '--json',
    ]);
    expect(full.stderr).toContain('"event":"progress"');
    expect(full.code).toBe(0);
    const summary = JSON.parse(full.stdout) as {
      backupId: string;
      kind: string;
      rangeBytes: number;
      bytesStored: number;
    };
    expect(summary.kind).toBe('full');
    // Random data: every byte listed is stored (plus an 8-byte header per chunk).
    expect(summary.bytesStored).toBeGreaterThanOrEqual(summary.rangeBytes);
    points.push({ snapshotId: s0.id, content: s0.content, backupId: summary.backupId });

    for (let i = 1; i <= 3; i++) {
      await source.randomWrites(25, 256 * 1024);
      // A zeroed range: the incremental must carry it as zeros, not skip it.
      const zeroAt = 4096 * Math.floor(Math.random() * ((VOLUME_BYTES - MiB) / 4096));
      await source.zero(zeroAt, 256 * 1024);
      const snap = await source.snapshot(`snap-${i}`);
      const inc = await createBackup({
        driver: t.endpoint,
        snapshotId: snap.id,
        baseSnapshotId: points[i - 1].snapshotId,
        repoDir,
      });
      expect(inc.kind).toBe('incremental');
      expect(inc.parent).toBe(points[i - 1].backupId);
      // An incremental copies far less than the allocated data.
      expect(inc.bytesRead).toBeLessThan(summary.rangeBytes);
      points.push({ snapshotId: snap.id, content: snap.content, backupId: inc.backupId });
    }
    // No temporary volume is left behind: only the source.
    expect(await t.csi.listVolumeIds()).toEqual([source.volumeId]);
    const verify = await runCli(['backup', 'verify', '--repo', repoDir, '--json', '--quiet']);
    expect(verify.code).toBe(0);
    expect(JSON.parse(verify.stdout)).toMatchObject({ ok: true, backups: 4 });
  });

  test('every point restores byte-for-byte, to a file and to a new volume', async () => {
    expect(points.length).toBe(4);
    for (const [i, point] of points.entries()) {
      // The snapshot itself, read through NBD the way the tool reads it, matches our model.
      const snapshotBytes = await withSnapshotVolume(
        t.csi,
        {
          snapshotId: point.snapshotId,
          sizeBytes: VOLUME_BYTES,
          name: `check-${i}`,
          nodeId: 'checker',
          connections: 2,
        },
        async (pool) => {
          const parts = [];
          for (let at = 0; at < VOLUME_BYTES; at += 8 * MiB) parts.push(pool.read(at, 8 * MiB));
          return Buffer.concat((await Promise.all(parts)).map((p) => p.data));
        },
      );
      expect(snapshotBytes.equals(point.content)).toBe(true);

      const file = path.join(t.dir, `restore-${i}.img`);
      const toFile = await restoreBackup({
        repoDir,
        backupId: point.backupId,
        target: { kind: 'file', path: file },
      });
      expect(toFile.chain.length).toBe(i + 1);
      const restored = fs.readFileSync(file);
      expect(restored.length).toBe(VOLUME_BYTES);
      expect(restored.equals(snapshotBytes)).toBe(true);
      // Sparse: the image holds no more than the data written into it (plus file-system slack).
      expect(fs.statSync(file).blocks * 512).toBeLessThan(toFile.bytesWritten + 8 * MiB);
      fs.rmSync(file);

      const toVolume = await runCli([
        'backup',
        'restore',
        '--repo',
        repoDir,
        '--backup',
        point.backupId,
        '--driver',
        t.endpoint,
        '--volume',
        `restored-${i}`,
        '--json',
      ]);
      expect(toVolume.stderr).not.toContain('Error');
      expect(toVolume.code).toBe(0);
      const result = JSON.parse(toVolume.stdout) as { volumeId: string; bytesVerified: number };
      expect((await readVolume(t.csi, result.volumeId)).equals(snapshotBytes)).toBe(true);
      await t.csi.deleteVolume(result.volumeId);
    }
  });

  test('restore refuses a volume name that already holds data', async () => {
    const args = ['backup', 'restore', '--repo', repoDir, '--backup', points[0].backupId];
    const first = await runCli([...args, '--driver', t.endpoint, '--volume', 'twice', '--json', '--quiet']);
    expect(first.code).toBe(0);
    const again = await runCli([...args, '--driver', t.endpoint, '--volume', 'twice', '--quiet']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already holds data/);
    // The refused restore left the volume as it was (not deleted, not published).
    const volumeId = (JSON.parse(first.stdout) as { volumeId: string }).volumeId;
    expect((await readVolume(t.csi, volumeId)).equals(points[0].content)).toBe(true);
    await t.csi.deleteVolume(volumeId);
  });

  test('an incremental after changing N MiB reads about N MiB from the export (server-side count)', async () => {
    // Server side: the driver's own counter of bytes its NBD exports read (what /metrics shows).
    const exportReadBytes = async (): Promise<number> =>
      (await nbdBytes.get()).values.filter((v) => v.labels.op === 'read').reduce((n, v) => n + v.value, 0);
    const N = 8 * MiB;
    {
      const block = 64 * 1024;
      const blocks = new Set<number>();
      while (blocks.size < N / block) blocks.add(Math.floor(Math.random() * (VOLUME_BYTES / block)));
      for (const b of blocks) await source.write(b * block, randomBytes(block));
      const snap = await source.snapshot('snap-n');
      const before = await exportReadBytes();
      const inc = await createBackup({
        driver: t.endpoint,
        snapshotId: snap.id,
        baseSnapshotId: points[points.length - 1].snapshotId,
        repoDir,
      });
      const serverBytes = (await exportReadBytes()) - before;
      expect(inc.rangeBytes).toBe(N);
      expect(inc.bytesRead).toBeLessThanOrEqual(1.05 * N);
      expect(serverBytes).toBeLessThanOrEqual(1.05 * N);
      expect(serverBytes).toBeGreaterThanOrEqual(N);
      points.push({ snapshotId: snap.id, content: snap.content, backupId: inc.backupId });
    }
  });

  test('a corrupt chunk: verify names it and restore refuses the chain', async () => {
    const repo = await Repository.open(repoDir);
    const full = await repo.readManifest(points[0].backupId);
    const victim = full.chunks.find((c) => c[2])![2];
    // Flip the last byte of the chunk's record inside its pack.
    const { file, offset, length } = (await repo.locateChunk(victim))!;
    const bytes = fs.readFileSync(file);
    bytes[offset + length - 1] ^= 0xff;
    fs.writeFileSync(file, bytes);

    const verify = await runCli(['backup', 'verify', '--repo', repoDir, '--quiet']);
    expect(verify.code).toBe(1);
    expect(verify.stdout).toContain(victim);
    expect(verify.stdout).toContain(file);
    expect(verify.stdout).toMatch(/corrupt-chunk/);

    const volumesBefore = await t.csi.listVolumeIds();
    const last = points[points.length - 1].backupId;
    const restore = await runCli([
      'backup',
      'restore',
      '--repo',
      repoDir,
      '--backup',
      last,
      '--driver',
      t.endpoint,
      '--volume',
      'should-not-exist',
      '--quiet',
    ]);
    expect(restore.code).toBe(1);
    expect(restore.stderr).toMatch(/does not verify/);
    expect(restore.stderr).toContain(victim);
    expect(await t.csi.listVolumeIds()).toEqual(volumesBefore);
    const toFile = await runCli([
      'backup',
      'restore',
      '--repo',
      repoDir,
      '--backup',
      last,
      '--to-file',
      path.join(t.dir, 'x.img'),
      '--quiet',
    ]);
    expect(toFile.code).toBe(1);
    expect(fs.existsSync(path.join(t.dir, 'x.img'))).toBe(false);
  });
  test('delete refuses a backup with dependents unless --with-dependents; list shows chains', async () => {
    const list = await runCli(['backup', 'list', '--repo', repoDir]);
    expect(list.code).toBe(0);
    expect(list.stdout.split('\n').filter(Boolean).length).toBe(points.length);
    expect(list.stdout).toContain(`  ${points[1].backupId}`);
    const show = await runCli([
      'backup',
      'show',
      '--repo',
      repoDir,
      '--backup',
      points[2].backupId,
      '--json',
    ]);
    expect(JSON.parse(show.stdout)).toMatchObject({ chain: points.slice(0, 3).map((p) => p.backupId) });

    const refused = await runCli(['backup', 'delete', '--repo', repoDir, '--backup', points[1].backupId]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(points[2].backupId);
    const deleted = await runCli([
      'backup',
      'delete',
      '--repo',
      repoDir,
      '--backup',
      points[1].backupId,
      '--with-dependents',
      '--json',
    ]);
    expect(deleted.code).toBe(0);
    expect((JSON.parse(deleted.stdout) as { deleted: string[] }).deleted.sort()).toEqual(
      points
        .slice(1)
        .map((p) => p.backupId)
        .sort(),
    );
    const repo = await Repository.open(repoDir);
    expect((await repo.listManifests()).map((m) => m.id)).toEqual([points[0].backupId]);
  });
});

describe('interrupted backups', () => {
  let t: BackupDriver;
  let source: SourceVolume;
  let snapshotId: string;
  let content: Buffer;

  beforeAll(async () => {
    t = await startBackupDriver();
    source = await SourceVolume.create(t.csi, 'big', 256 * MiB);
    await source.write(0, randomBytes(192 * MiB));
    ({ id: snapshotId, content } = await source.snapshot('big-0'));
  });
  afterAll(async () => {
    await source.close();
    await t.close();
  });

  /** Waits until the backup has sealed `atLeast` packs (of 8 MiB here: --pack-size below). */
  async function waitForPacks(repoDir: string, atLeast: number): Promise<void> {
    for (let i = 0; i < 2000; i++) {
      const dir = path.join(repoDir, 'packs');
      const count = fs.existsSync(dir) ? fs.readdirSync(dir).length : 0;
      if (count >= atLeast) return;
      await new Promise((r) => setTimeout(r, 5));
    }
    throw new Error('the backup sealed no pack');
  }

  test('a 64 KiB chunk grid: runs of chunks read together, many packs, byte-identical restore', async () => {
    const repoDir = path.join(t.dir, 'repo-small-grid');
    const summary = await createBackup({
      driver: t.endpoint,
      snapshotId,
      repoDir,
      chunkBytes: 64 * 1024,
      packBytes: 16 * MiB,
      connections: 2,
    });
    expect(summary.rangeBytes).toBe(192 * MiB);
    expect(summary.chunksNew).toBe((192 * MiB) / (64 * 1024));
    expect(summary.bytesRead).toBeLessThanOrEqual(1.05 * summary.rangeBytes);
    expect(fs.readdirSync(path.join(repoDir, 'packs')).length).toBeGreaterThanOrEqual(12);
    const file = path.join(t.dir, 'small-grid.img');
    await restoreBackup({ repoDir, backupId: summary.backupId, target: { kind: 'file', path: file } });
    expect(fs.readFileSync(file).equals(content)).toBe(true);
    fs.rmSync(file);
    fs.rmSync(repoDir, { recursive: true });
  });

  test('a full disk mid-way: the backup fails clearly, the repository stays valid', async () => {
    const disk = path.join(t.dir, 'small-disk');
    fs.mkdirSync(disk);
    // Needs root, as the rest of the suite (scripts/setup) does: no silent skip.
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=40m', 'tmpfs', disk]);
    try {
      const repoDir = path.join(disk, 'repo');
      await expect(
        createBackup({ driver: t.endpoint, snapshotId, repoDir, packBytes: 8 * MiB }),
      ).rejects.toThrow(/ENOSPC/);
      const report = await (await Repository.open(repoDir)).verify();
      expect(report).toMatchObject({ backups: 0, problems: [] });
      // Packs sealed before the disk filled are durable, unreferenced, and nothing else is left.
      expect(report.orphanChunks).toBeGreaterThan(0);
      expect(fs.readdirSync(path.join(repoDir, 'tmp'))).toEqual([]);
      expect(fs.existsSync(path.join(repoDir, 'lock'))).toBe(false);
      expect(await t.csi.listVolumeIds()).toEqual([source.volumeId]);
    } finally {
      execFileSync('umount', [disk]);
    }
  });

  test('SIGKILL mid-way: the repository verifies and the next run succeeds', async () => {
    const repoDir = path.join(t.dir, 'repo-kill');
    const child = spawnCli([
      'backup',
      'create',
      '--driver',
      t.endpoint,
      '--snapshot',
      snapshotId,
      '--repo',
      repoDir,
      '--connections',
      '1',
      '--pack-size',
      '8M',
      '--quiet',
    ]);
    const exited = new Promise((r) => child.on('exit', r));
    await waitForPacks(repoDir, 2);
    child.kill('SIGKILL');
    await exited;
    expect(fs.existsSync(path.join(repoDir, 'lock'))).toBe(true);
    expect(fs.readdirSync(path.join(repoDir, 'backups'))).toEqual([]);

    const verify = await runCli(['backup', 'verify', '--repo', repoDir, '--json', '--quiet']);
    expect(verify.code).toBe(0);
    expect(JSON.parse(verify.stdout)).toMatchObject({ ok: true, backups: 0 });

    // The stale lock (its process is gone) is taken over; the killed run's temporary volume reused.
    const again = await runCli([
      'backup',
      'create',
      '--driver',
      t.endpoint,
      '--snapshot',
      snapshotId,
      '--repo',
      repoDir,
      '--json',
      '--quiet',
    ]);
    expect(again.stderr).toBe('');
    expect(again.code).toBe(0);
    const summary = JSON.parse(again.stdout) as { chunksReused: number; rangeBytes: number };
    expect(summary.chunksReused).toBeGreaterThan(0);
    expect(summary.rangeBytes).toBe(192 * MiB);
    const after = await runCli(['backup', 'verify', '--repo', repoDir, '--json', '--quiet']);
    expect(JSON.parse(after.stdout)).toMatchObject({ ok: true, backups: 1, orphanChunks: 0 });
    expect(await t.csi.listVolumeIds()).toEqual([source.volumeId]);
  });

  test('SIGTERM mid-way: the temporary volume is cleaned up and the lock released', async () => {
    const repoDir = path.join(t.dir, 'repo-term');
    const child = spawnCli([
      'backup',
      'create',
      '--driver',
      t.endpoint,
      '--snapshot',
      snapshotId,
      '--repo',
      repoDir,
      '--connections',
      '1',
      '--pack-size',
      '8M',
      '--quiet',
    ]);
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    await waitForPacks(repoDir, 1);
    child.kill('SIGTERM');
    expect(await exited).toBe(130);
    expect(fs.existsSync(path.join(repoDir, 'lock'))).toBe(false);
    expect(await t.csi.listVolumeIds()).toEqual([source.volumeId]);
  });

  test('a second writer gets a clear error while the first holds the lock', async () => {
    const repoDir = path.join(t.dir, 'repo-two');
    const first = spawnCli([
      'backup',
      'create',
      '--driver',
      t.endpoint,
      '--snapshot',
      snapshotId,
      '--repo',
      repoDir,
      '--connections',
      '1',
      '--pack-size',
      '8M',
      '--quiet',
    ]);
    const exited = new Promise<number | null>((r) => first.on('exit', (code) => r(code)));
    await waitForPacks(repoDir, 1);
    // Backups are fast now: hold the first writer still (lock taken, data half copied) while the
    // second one starts, then let it finish.
    first.kill('SIGSTOP');
    const second = await runCli([
      'backup',
      'create',
      '--driver',
      t.endpoint,
      '--snapshot',
      snapshotId,
      '--repo',
      repoDir,
      '--quiet',
    ]);
    first.kill('SIGCONT');
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/is locked by backup create .* \(pid \d+ on /);
    expect(await exited).toBe(0);
  });
});
