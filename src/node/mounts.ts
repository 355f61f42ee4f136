// Mount table queries and mount/unmount, all through src/exec.
import fs from 'node:fs';
import { run } from '../exec';

interface FindmntJson {
  filesystems: { target: string; source: string; fstype: string; options: string }[];
}

export interface MountEntry {
  target: string;
  source: string;
  fstype: string;
  options: string[];
}

/** The mount at exactly `target`, if any (the last one, when mounts are stacked). */
export async function mountAt(target: string): Promise<MountEntry | undefined> {
  // findmnt exits 1 when nothing is mounted there.
  const result = await run(
    'findmnt',
    ['-J', '-n', '-o', 'TARGET,SOURCE,FSTYPE,OPTIONS', '--mountpoint', target],
    { okExitCodes: [0, 1], quiet: true },
  );
  if (result.exitCode === 1 || !result.stdout.trim()) return undefined;
  const json = JSON.parse(result.stdout) as FindmntJson;
  const last = json.filesystems[json.filesystems.length - 1];
  if (!last) return undefined;
  return { target: last.target, source: last.source, fstype: last.fstype, options: last.options.split(',') };
}

export async function isMounted(target: string): Promise<boolean> {
  return (await mountAt(target)) !== undefined;
}

export async function mount(
  source: string,
  target: string,
  fstype: string | undefined,
  options: string[],
): Promise<void> {
  const args = [];
  if (fstype) args.push('-t', fstype);
  if (options.length) args.push('-o', options.join(','));
  await run('mount', [...args, source, target]);
}

/** Bind-mounts `source` on `target`, then makes it read-only if asked (needs a remount). */
export async function bindMount(source: string, target: string, readOnly: boolean): Promise<void> {
  await run('mount', ['--bind', source, target]);
  if (readOnly) await run('mount', ['-o', 'remount,bind,ro', target]);
}

/** Unmounts every mount stacked at `target`; does nothing when nothing is mounted. */
export async function unmountAll(target: string): Promise<void> {
  for (let i = 0; i < 8 && (await isMounted(target)); i++) {
    await run('umount', [target]);
  }
}

/**
 * Whether a path exists. Asynchronous on purpose: in the embedded role the NBD server behind a
 * mounted volume runs in this process, and a synchronous stat that needs the volume's I/O
 * would block the very event loop that has to answer it.
 */
export async function pathExists(p: string): Promise<boolean> {
  try {
    await fs.promises.lstat(p);
    return true;
  } catch {
    return false;
  }
}
