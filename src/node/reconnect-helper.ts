// The nbd-reconnect helper beside each kernel attachment (native/nbd-reconnect.c): it sets the
// dead-connection timeout and hands the kernel a new socket whenever the connection dies.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { run, spawnDetached } from '../exec';
import { processAlive } from '../util/process';
import type { AttachOptions, Grant } from './attachment';
import { AttachError, grantEndpoint, secretOf } from './grant';

/** The N of /dev/nbdN, which is what the helper and the netlink interface take. */
function nbdIndex(device: string): string {
  const m = /^\/dev\/nbd(\d+)$/.exec(device);
  if (!m) throw new Error(`${device} is not an nbd device`);
  return m[1];
}

/**
 * Starts the helper for `device` and resolves with its pid once it watches the device (it says
 * so on the pipe it gets as fd 3). `resume`: it replaces one that died, and the link may have
 * died meanwhile.
 */
export async function startHelper(
  device: string,
  grant: Grant,
  workDir: string,
  opts: AttachOptions,
  resume = false,
): Promise<number> {
  const { host, port } = grantEndpoint(grant);
  // prettier-ignore
  const args = [
    '-D', String(opts.deadConnectionTimeoutSeconds), ...(resume ? ['-r'] : []), '-R', '3',
    nbdIndex(device), host, String(port), '-',
  ];
  return spawnDetached(opts.reconnectHelper, args, {
    logFile: path.join(workDir, 'nbd-reconnect.log'),
    // The name carries the grant's secret: kept off the helper's command line.
    env: { NBD_EXPORT_NAME: grant.exportName },
    secrets: secretOf(grant.exportName),
    ready: 'fd3',
  }).catch((e: Error) => {
    throw new AttachError(
      'failed',
      `${device} is attached but its reconnection helper failed (${opts.reconnectHelper}, ` +
        `built from native/nbd-reconnect.c): ${e.message}`,
    );
  });
}

/** True if `pid` is still a running nbd-reconnect (not a process that reused the pid). */
export function helperRunning(pid: number | undefined): pid is number {
  if (!pid || !processAlive(pid)) return false;
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('nbd-reconnect');
  } catch {
    return false;
  }
}

/** Stops the helper, if that pid is still the helper, and waits (up to 2 s) for it to exit. */
export async function stopHelper(pid: number | undefined): Promise<void> {
  if (!helperRunning(pid)) return;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; processAlive(pid) && i < 100; i++) await sleep(20);
}

/** Netlink-attached devices refuse NBD_SET_SIZE; the helper sends NBD_CMD_RECONFIGURE instead. */
export async function resizeNbdDevice(device: string, sizeBytes: number, opts: AttachOptions): Promise<void> {
  await run(opts.reconnectHelper, ['-s', String(sizeBytes), nbdIndex(device)]);
}
