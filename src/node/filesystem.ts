// Filesystems on attached devices: detect, create, grow, measure.
import fs from 'node:fs';
import { run } from '../exec';

export type FsType = 'ext4' | 'xfs';

/** The filesystem (or other signature) on a device, or undefined when it is blank. */
export async function probeFilesystem(device: string): Promise<string | undefined> {
  // blkid exits 2 when it finds no signature at all.
  const { stdout } = await run('blkid', ['-p', '-o', 'value', '-s', 'TYPE', device], {
    quiet: true,
    okExitCodes: [0, 2],
  });
  return stdout.trim() || undefined;
}

export async function makeFilesystem(device: string, fsType: FsType): Promise<void> {
  if (fsType === 'xfs') await run('mkfs.xfs', ['-q', '-f', device], { timeoutMs: 300_000 });
  else
    await run('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=1,lazy_journal_init=1', device], {
      timeoutMs: 300_000,
    });
}

/** Mount options a filesystem always needs from us. */
export function requiredMountOptions(fsType: string): string[] {
  // A clone or restored snapshot carries its source's XFS UUID; without nouuid it will not
  // mount next to the source.
  return fsType === 'xfs' ? ['nouuid'] : [];
}

/** Grows a mounted filesystem to fill its (already grown) device. */
export async function growFilesystem(fsType: string, device: string, mountPoint: string): Promise<void> {
  if (fsType === 'xfs') await run('xfs_growfs', [mountPoint], { timeoutMs: 300_000 });
  else if (fsType === 'ext4' || fsType === 'ext3' || fsType === 'ext2')
    await run('resize2fs', [device], { timeoutMs: 300_000 });
  else throw new Error(`cannot grow a ${fsType} filesystem`);
}

export async function deviceSizeBytes(device: string): Promise<number> {
  const { stdout } = await run('blockdev', ['--getsize64', device], { quiet: true });
  return Number(stdout.trim());
}

export interface FsUsage {
  bytes: { total: number; used: number; available: number };
  inodes: { total: number; used: number; available: number };
}

export async function filesystemUsage(mountPoint: string): Promise<FsUsage> {
  const s = await fs.promises.statfs(mountPoint);
  return {
    bytes: { total: s.blocks * s.bsize, used: (s.blocks - s.bfree) * s.bsize, available: s.bavail * s.bsize },
    inodes: { total: s.files, used: s.files - s.ffree, available: s.ffree },
  };
}
