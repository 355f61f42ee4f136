// Turning an NBD export into a local block device, by one of two methods (attachment.ts has the
// interface, each method its own module):
// - kernel: `nbd-client` on /dev/nbdN, when the nbd module is loaded (kernel-nbd.ts);
// - nbdfuse: `nbdfuse` exposes the export as a file, a loop device over it (nbdfuse.ts).
import fs from 'node:fs';
import type { AttachOptions, Attachment, AttachStrategy, Grant, Method } from './attachment';
import { exportSizeBytes } from './grant';
import { kernelNbd } from './kernel-nbd';
import { nbdFuse } from './nbdfuse';
import { deviceSectors } from './sysfs';

export type { AttachOptions, Attachment, Grant, Method } from './attachment';
export { AttachError, type AttachFailure } from './grant';

const STRATEGIES: Record<Method, AttachStrategy> = { kernel: kernelNbd, nbdfuse: nbdFuse };

function strategy(method: Method): AttachStrategy {
  const s = STRATEGIES[method] as AttachStrategy | undefined;
  if (!s) throw new Error(`unknown attach method ${JSON.stringify(method)}`);
  return s;
}

export function kernelNbdAvailable(): boolean {
  return fs.existsSync('/sys/module/nbd');
}

export function chooseMethod(wanted: 'auto' | Method): Method {
  if (wanted !== 'auto') return wanted;
  return kernelNbdAvailable() ? 'kernel' : 'nbdfuse';
}

export function attach(
  grant: Grant,
  method: Method,
  workDir: string,
  opts: AttachOptions,
): Promise<Attachment> {
  return strategy(method).attach(grant, workDir, opts);
}

/** Undoes `attach`; safe to repeat. */
export function detach(a: Attachment): Promise<void> {
  return strategy(a.method).detach(a);
}

/** Makes the attached device as large as the export is now; returns the new size. */
export async function growAttachment(a: Attachment, grant: Grant, opts: AttachOptions): Promise<number> {
  const size = await exportSizeBytes(grant);
  if (size > deviceSectors(a.device) * 512) await strategy(a.method).grow(a, size, opts);
  return size;
}

/**
 * After a restart of the node plugin: puts back what the restart took (a kernel attachment's
 * reconnection helper); returns the attachment as it is now.
 */
export function resumeAttachment(
  a: Attachment,
  grant: Grant,
  workDir: string,
  opts: AttachOptions,
): Promise<Attachment> {
  return strategy(a.method).resume(a, grant, workDir, opts);
}
