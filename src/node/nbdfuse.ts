// The nbdfuse method, for hosts without the nbd module: `nbdfuse` exposes the export as a file on
// a FUSE mount and `losetup` makes it a loop device. The file's size is fixed while nbdfuse runs,
// so this method opens the grant's growable view (a large window onto the volume) and caps the
// loop device at the volume's real size; growing raises the cap while the filesystem stays mounted.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { run, spawnDetached } from '../exec';
import { logger } from '../log';
import { processAlive } from '../util/process';
import type { Attachment, AttachStrategy, Grant } from './attachment';
import { attachError, exportSizeBytes, nbdUri, secretOf } from './grant';
import { detachLoop, setLoopSizeLimit, setupLoop } from './loop-device';
import { loopBackingFile } from './sysfs';

const log = logger('attach');

async function attach(grant: Grant, workDir: string): Promise<Attachment> {
  const fuseDir = path.join(workDir, 'fuse');
  fs.mkdirSync(fuseDir, { recursive: true });
  const pidFile = path.join(workDir, 'nbdfuse.pid');
  fs.rmSync(pidFile, { force: true });
  const size = await exportSizeBytes(grant);
  const disk = path.join(fuseDir, 'disk');
  const args = [
    '-P',
    pidFile,
    ...(grant.readOnly ? ['-r'] : []),
    disk,
    nbdUri(grant, grant.growableExportName),
  ];
  const fusePid = await spawnDetached('nbdfuse', args, {
    logFile: path.join(workDir, 'nbdfuse.log'),
    // nbdfuse writes its pid file once the FUSE mount serves.
    ready: () => fs.existsSync(pidFile),
    secrets: secretOf(grant.growableExportName),
  }).catch((e: unknown) => {
    throw attachError('nbdfuse', grant, e);
  });
  try {
    const device = await setupLoop(disk, size, grant.readOnly);
    return { method: 'nbdfuse', device, fuseDir, fusePid };
  } catch (e) {
    await stopFuse(fuseDir, fusePid).catch(() => undefined);
    throw e;
  }
}

async function detach(a: Attachment): Promise<void> {
  // Only a loop device still over our file is ours to detach (the number may have been reused).
  const backing = loopBackingFile(a.device);
  if (backing !== undefined && a.fuseDir && backing.startsWith(a.fuseDir)) await detachLoop(a.device);
  if (a.fuseDir) await stopFuse(a.fuseDir, a.fusePid);
}

async function stopFuse(fuseDir: string, pid: number | undefined): Promise<void> {
  // The loop device lets go of the file asynchronously; retry the unmount for a while.
  for (let i = 0; ; i++) {
    try {
      await run('fusermount3', ['-u', fuseDir], { quiet: true });
      break;
    } catch (e) {
      if (!fs.existsSync(fuseDir) || !fuseMounted(fuseDir)) break;
      if (i >= 50) throw e;
      await sleep(100);
    }
  }
  for (let i = 0; pid && processAlive(pid) && i < 100; i++) await sleep(50);
  if (pid && processAlive(pid)) {
    log.warn('nbdfuse still running after unmount; sending SIGTERM', { pid });
    process.kill(pid, 'SIGTERM');
  }
}

function fuseMounted(dir: string): boolean {
  const mounts = fs.readFileSync('/proc/self/mounts', 'utf8');
  return mounts.split('\n').some((l) => l.split(' ')[1] === dir);
}

export const nbdFuse: AttachStrategy = {
  attach,
  detach,
  grow: (a, sizeBytes, opts) => setLoopSizeLimit(opts.reconnectHelper, a.device, sizeBytes),
  // Nothing to restart: only kernel attachments have a helper beside them.
  resume: async (a) => a,
};
