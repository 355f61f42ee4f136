// What /sys/block says about a block device (cheap, synchronous reads, fine for polling).
import fs from 'node:fs';
import path from 'node:path';

function sysBlock(device: string): string {
  return `/sys/block/${path.basename(device)}`;
}

/** The device's size in 512-byte sectors (0 for an nbd device with no connection). */
export function deviceSectors(device: string): number {
  return Number(fs.readFileSync(`${sysBlock(device)}/size`, 'utf8').trim());
}

/** An nbd device that a client has connected (its `pid` file exists only then). */
export function nbdConnected(device: string): boolean {
  return fs.existsSync(`${sysBlock(device)}/pid`);
}

/** A loop device's backing file, or undefined if it has none. */
export function loopBackingFile(device: string): string | undefined {
  const file = `${sysBlock(device)}/loop/backing_file`;
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim() : undefined;
}
