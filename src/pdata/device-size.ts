import fs from 'node:fs';

/** Size in bytes of a regular file or a block device (through sysfs, as Node has no BLKGETSIZE64). */
export function deviceSizeBytes(fd: number, pathForErrors: string): number {
  const st = fs.fstatSync(fd);
  if (st.isFile()) return st.size;
  if (st.isBlockDevice()) {
    const major = Math.floor(st.rdev / 256) & 0xfff;
    const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
    const sectors = fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim();
    return Number(sectors) * 512;
  }
  throw new Error(`${pathForErrors}: neither a regular file nor a block device`);
}
