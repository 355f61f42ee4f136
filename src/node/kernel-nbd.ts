// The kernel method (the production path): `nbd-client` attaches /dev/nbdN through netlink with
// a request timeout, and nbd-reconnect beside it keeps the device alive across restarts of the
// NBD server, so such a restart stalls I/O instead of failing it (docs/node.md).
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { run } from '../exec';
import { logger } from '../log';
import { SerialQueue } from '../util/serial-queue';
import type { Attachment, AttachStrategy, Grant, AttachOptions } from './attachment';
import { attachError, grantEndpoint, secretOf } from './grant';
import { helperRunning, resizeNbdDevice, startHelper, stopHelper } from './reconnect-helper';
import { deviceSectors, nbdConnected } from './sysfs';

const log = logger('attach');

// Choosing a free /dev/nbdN and connecting it must not interleave, or two could pick one device.
const deviceChoice = new SerialQueue();

function freeNbdDevice(): string {
  for (let i = 0; i < 1024; i++) {
    const sys = `/sys/block/nbd${i}`;
    if (!fs.existsSync(sys)) break;
    if (!fs.existsSync(`${sys}/pid`) && deviceSectors(`/dev/nbd${i}`) === 0) return `/dev/nbd${i}`;
  }
  throw new Error('no free /dev/nbdN device (load nbd with more nbds_max)');
}

async function waitForSize(device: string): Promise<void> {
  for (let i = 0; deviceSectors(device) === 0; i++) {
    if (i >= 200) throw new Error(`${device} still has no size 10 s after nbd-client connected`);
    await sleep(50);
  }
}

async function attach(grant: Grant, workDir: string, opts: AttachOptions): Promise<Attachment> {
  const { host, port } = grantEndpoint(grant);
  return deviceChoice.run(async () => {
    const device = freeNbdDevice();
    // prettier-ignore
    const args = [
      host, String(port), device, '-N', grant.exportName, '-b', '4096', '-t', String(opts.requestTimeoutSeconds),
      ...(grant.readOnly ? ['-readonly'] : []),
    ];
    await run('nbd-client', args, { secrets: secretOf(grant.exportName) }).catch((e: unknown) => {
      throw attachError(`nbd-client attach to ${device}`, grant, e);
    });
    try {
      await waitForSize(device);
      const helperPid = await startHelper(device, grant, workDir, opts);
      return { method: 'kernel' as const, device, helperPid };
    } catch (e) {
      await run('nbd-client', ['-d', device]).catch(() => undefined);
      throw e;
    }
  });
}

async function detach(a: Attachment): Promise<void> {
  // The helper first, so that it does not take the disconnect for a dead link.
  await stopHelper(a.helperPid);
  if (nbdConnected(a.device)) await run('nbd-client', ['-d', a.device]);
}

/** An attachment that outlived its helper (the node plugin's container took it along) gets a new one. */
async function resume(
  a: Attachment,
  grant: Grant,
  workDir: string,
  opts: AttachOptions,
): Promise<Attachment> {
  if (helperRunning(a.helperPid) || !nbdConnected(a.device)) return a;
  const helperPid = await startHelper(a.device, grant, workDir, opts, true);
  log.info('restarted the reconnection helper', { device: a.device, pid: helperPid });
  return { ...a, helperPid };
}

export const kernelNbd: AttachStrategy = {
  attach,
  detach,
  grow: (a, sizeBytes, opts) => resizeNbdDevice(a.device, sizeBytes, opts),
  resume,
};
