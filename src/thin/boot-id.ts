import fs from 'node:fs';

const BOOT_ID_PATH = '/proc/sys/kernel/random/boot_id';

/** This boot's id (16 bytes), or undefined where it cannot be read: what the page cache lives for. */
export function currentBootId(): Buffer | undefined {
  try {
    const hex = fs.readFileSync(BOOT_ID_PATH, 'utf8').trim().replace(/-/g, '');
    return /^[0-9a-f]{32}$/.test(hex) ? Buffer.from(hex, 'hex') : undefined;
  } catch {
    return undefined;
  }
}
