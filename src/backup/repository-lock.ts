// The repository's writer lock: a file created exclusively, holding who took it. A lock left by
// a process of this host that no longer runs is taken over; any other is reported by holder.
import fsp from 'node:fs/promises';
import os from 'node:os';
import { processAlive } from '../util/process';
import { RepositoryLocked } from './repository-errors';

export interface LockInfo {
  pid: number;
  host: string;
  command: string;
  since: string;
}

export class RepositoryLock {
  private released = false;
  constructor(private readonly file: string) {}

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await fsp.rm(this.file, { force: true });
  }
}

/** Takes the lock `file` of repository `dir` for `command`, or throws RepositoryLocked. */
export async function takeLock(file: string, dir: string, command: string): Promise<RepositoryLock> {
  const info: LockInfo = { pid: process.pid, host: os.hostname(), command, since: new Date().toISOString() };
  for (let attempt = 0; attempt < 2; attempt++) {
    if (await createLockFile(file, info)) return new RepositoryLock(file);
    const holder = await readHolder(file);
    if (holder && holder.host === info.host && !processAlive(holder.pid) && attempt === 0) {
      await fsp.rm(file, { force: true });
      continue;
    }
    const who = holder
      ? `${holder.command} (pid ${holder.pid} on ${holder.host}, since ${holder.since})`
      : 'another process';
    throw new RepositoryLocked(
      `repository ${dir} is locked by ${who}; wait for it to finish, or remove ${file} if that process is gone`,
    );
  }
  throw new RepositoryLocked(`repository ${dir}: could not take the lock`);
}

/** false if the file exists already. */
async function createLockFile(file: string, info: LockInfo): Promise<boolean> {
  let handle: fsp.FileHandle;
  try {
    handle = await fsp.open(file, 'wx');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
  try {
    await handle.writeFile(JSON.stringify(info) + '\n');
    await handle.sync();
  } finally {
    await handle.close();
  }
  return true;
}

async function readHolder(file: string): Promise<LockInfo | undefined> {
  try {
    return JSON.parse(await fsp.readFile(file, 'utf8')) as LockInfo;
  } catch {
    return undefined; // being written right now, or truncated by a crash
  }
}
