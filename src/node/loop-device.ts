// Loop devices over a file, with a size limit below the file's size (nbdfuse's growable view).
import { run } from '../exec';
import { SerialQueue } from '../util/serial-queue';

// `losetup -f` picks the first free device; two at once could pick the same one.
const setups = new SerialQueue();

/** A new loop device over `file`, `sizeBytes` long; returns its path. */
export function setupLoop(file: string, sizeBytes: number, readOnly: boolean): Promise<string> {
  return setups.run(async () => {
    // prettier-ignore
    const args = [
      '-f', '--show', '--direct-io=on', '--sizelimit', String(sizeBytes), ...(readOnly ? ['-r'] : []), file,
    ];
    return (await run('losetup', args)).stdout.trim();
  });
}

export async function detachLoop(device: string): Promise<void> {
  await run('losetup', ['-d', device]);
}

// No util-linux command changes the size limit of a bound loop device (`losetup -c` re-reads
// the file's size but keeps the limit); the node's native helper issues the ioctl.
/** Raises (or lowers) the loop device's size limit while it stays in use. */
export async function setLoopSizeLimit(helper: string, device: string, sizeBytes: number): Promise<void> {
  await run(helper, ['-l', String(sizeBytes), device]);
}
