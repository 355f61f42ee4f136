import fs from 'node:fs';
import path from 'node:path';

/**
 * Replaces `file` so that a crash leaves either the old or the new content, never a mix:
 * write a temp file, fsync it, rename it over, fsync the directory.
 */
export function writeFileAtomic(file: string, content: string | Buffer): void {
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
