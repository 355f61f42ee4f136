import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** A fresh temporary directory, removed by the returned cleanup. */
export function makeTempDir(prefix = 'thinpool-test-'): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** A zero-filled sparse file of `bytes`. */
export function sparseFile(file: string, bytes: number): string {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, bytes);
  return file;
}
