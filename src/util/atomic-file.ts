// Replacing a file so that a crash leaves either the old or the new content, never a mix: write a
// temp file, sync it, rename it over, sync the directory. Sync variants for small state files
// written between awaits, async ones for the backup repository's many and larger files.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

/** Replaces `file` atomically and durably; the temp file sits beside it. */
export function writeFileAtomic(file: string, content: string | Buffer): void {
  // One temp name per process: sync writes never interleave, and a crash's debris is reused.
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeFileSync(fd, content);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(path.dirname(file));
}

/** Makes the names in `dir` durable (a new or renamed file is only durable with its directory). */
export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Async `writeFileAtomic`; temp names are unique, as several writes may be in flight. */
export async function writeFileAtomicAsync(
  file: string,
  content: string | Buffer,
  /** Where the temp file is written (same file system as `file`); default: beside `file`. */
  tmpDir = path.dirname(file),
): Promise<void> {
  const tmp = path.join(tmpDir, `${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}`);
  const handle = await fsp.open(tmp, 'wx');
  try {
    await handle.writeFile(content);
    await handle.datasync();
  } finally {
    await handle.close();
  }
  await fsp.rename(tmp, file);
  await fsyncDirAsync(path.dirname(file));
}

/** Async `fsyncDir`. */
export async function fsyncDirAsync(dir: string): Promise<void> {
  const handle = await fsp.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
