// An incremental backup from era tracking: the base snapshot is deleted, and the increment reads
// only the blocks written since the base backup's era (plus what was unmapped since, which reads
// as holes), yet restores byte for byte.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { createBackup } from '../../src/backup/create';
import { Repository } from '../../src/backup/repository';
import { restoreBackup } from '../../src/backup/restore';
import { runTool, thinTool } from '../helpers/tools';
import { type BackupDriver, MiB, SourceVolume, runCli, startBackupDriver } from './helpers';

jest.setTimeout(120_000);

const VOLUME_BYTES = 32 * MiB;
const BLOCK = 64 * 1024;

describe('backup --since-era', () => {
  let t: BackupDriver;
  let source: SourceVolume;
  beforeAll(async () => {
    t = await startBackupDriver(512 * MiB);
    source = await SourceVolume.create(t.csi, 'era-source', VOLUME_BYTES);
  });
  afterAll(async () => {
    await source.close();
    await t.close();
  });

  test('reads only what changed since the base era, with the base snapshot gone', async () => {
    const repoDir = path.join(t.dir, 'repo');
    await source.write(0, randomBytes(VOLUME_BYTES / 2));
    const s0 = await source.snapshot('era-0');
    const full = await createBackup({ driver: t.endpoint, snapshotId: s0.id, repoDir });
    const repo = await Repository.open(repoDir);
    const fullManifest = (await repo.listManifests()).find((m) => m.id === full.backupId)!;
    const era = fullManifest.era!;
    expect(era).toBeGreaterThan(0);

    // Whole-block writes into 24 distinct blocks (some in the never-written half), then 4 blocks
    // the full backup held are unmapped: 28 × 64 KiB of changed bytes.
    const zeroAt = (VOLUME_BYTES / BLOCK - 8) * BLOCK - VOLUME_BYTES / 2; // inside the written half
    // One of the writes lands in a block that is unmapped afterwards.
    const touched = new Set<number>([zeroAt / BLOCK + 1]);
    while (touched.size < 24) touched.add(Math.floor(Math.random() * (VOLUME_BYTES / BLOCK - 8)));
    for (const b of touched) await source.write(b * BLOCK, randomBytes(BLOCK));
    const zeroBlocks = [...Array(4).keys()].map((i) => zeroAt / BLOCK + i).filter((b) => !touched.has(b));
    await source.zero(zeroAt, 4 * BLOCK);
    const s1 = await source.snapshot('era-1');
    await t.csi.deleteSnapshot(s0.id);

    const cli = await runCli([
      'backup',
      'create',
      '--driver',
      t.endpoint,
      '--snapshot',
      s1.id,
      '--since-era',
      String(era),
      '--repo',
      repoDir,
      '--json',
      '--quiet',
    ]);
    expect({ code: cli.code, stderr: cli.stderr }).toEqual({ code: 0, stderr: '' });
    const inc = JSON.parse(cli.stdout) as {
      kind: string;
      parent: string;
      bytesRead: number;
      backupId: string;
    };
    expect(inc.kind).toBe('incremental');
    expect(inc.parent).toBe(full.backupId);
    // The changed blocks and the unmapped ones, nothing else (a full read would be 16 MiB).
    const changedBytes = (touched.size + zeroBlocks.length) * BLOCK;
    expect(inc.bytesRead).toBeGreaterThanOrEqual(touched.size * BLOCK);
    expect(inc.bytesRead).toBeLessThanOrEqual(1.05 * changedBytes);

    const file = path.join(t.dir, 'era-restore.img');
    await restoreBackup({ repoDir, backupId: inc.backupId, target: { kind: 'file', path: file } });
    expect(fs.readFileSync(file).equals(s1.content)).toBe(true);
    const manifest = (await repo.listManifests()).find((m) => m.id === inc.backupId)!;
    expect(manifest).toMatchObject({ sinceEra: era, baseSnapshotId: null });
    expect(manifest.era).toBeGreaterThan(era);

    // The same through the CLI against the driver: the volume's blocks written since that era.
    const status = await runCli(['era', 'status', '--endpoint', t.endpoint, '--json']);
    expect(JSON.parse(status.stdout)).toMatchObject({ enabled: true, block_bytes: BLOCK });
    const since = await runCli([
      'era',
      'written-since',
      source.volumeId,
      '--era',
      String(era),
      '--endpoint',
      t.endpoint,
    ]);
    const ranges = (JSON.parse(since.stdout) as { ranges: { length: number }[] }).ranges;
    const stillMapped = [...touched].filter((b) => b < zeroAt / BLOCK || b >= zeroAt / BLOCK + 4);
    expect(ranges.reduce((n, r) => n + r.length, 0)).toBe(stillMapped.length * BLOCK);

    // A held era snapshot of the running pool, read by era_invalidate: the 24 data blocks the
    // writes since that era went to (whole-block writes after a snapshot: one new block each).
    const snap = await runCli(['era', 'take-snap', '--endpoint', t.endpoint, '--json']);
    const held = JSON.parse(snap.stdout) as { metadata_snap_block: number; era: number };
    expect(held.metadata_snap_block).toBeGreaterThan(0);
    const inv = await runTool(thinTool('era_invalidate', '1.1'), [
      '--metadata-snapshot',
      String(held.metadata_snap_block),
      '--written-since',
      String(era),
      path.join(t.dir, 'pool', 'era-metadata'),
    ]);
    expect(inv.code).toBe(0);
    const listed = [
      ...inv.stdout.matchAll(/<block block="\d+"\/>|<range begin="(\d+)" end="(\d+)"\/>/g),
    ].reduce((n, m) => n + (m[1] === undefined ? 1 : Number(m[2]) - Number(m[1])), 0);
    expect(listed).toBe(touched.size);
    expect((await runCli(['era', 'take-snap', '--endpoint', t.endpoint])).stderr).toMatch(/already held/);
    expect((await runCli(['era', 'drop-snap', '--endpoint', t.endpoint])).code).toBe(0);
    const after = await runCli(['era', 'status', '--endpoint', t.endpoint, '--json']);
    expect(JSON.parse(after.stdout)).toMatchObject({ metadata_snap_block: 0 });
  });

  test('an era no backup of the volume reaches is refused clearly', async () => {
    const repoDir = path.join(t.dir, 'repo');
    const s2 = await source.snapshot('era-2');
    await expect(
      createBackup({ driver: t.endpoint, snapshotId: s2.id, sinceEra: 10_000, repoDir }),
    ).rejects.toThrow(/no backup of volume .* was taken in era 10000 or later: back it up in full first/);
  });
});
