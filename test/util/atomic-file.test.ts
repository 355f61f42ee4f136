import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeFileAtomic, writeFileAtomicAsync } from '../../src/util/atomic-file';

describe('atomic file writes', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'atomic-file-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('replaces a file and leaves no temp file behind (sync)', () => {
    const file = path.join(dir, 'state.json');
    writeFileAtomic(file, 'one');
    writeFileAtomic(file, 'two');
    expect(fs.readFileSync(file, 'utf8')).toBe('two');
    expect(fs.readdirSync(dir)).toEqual(['state.json']);
  });

  it('writes its temp files where it is told, several at once (async)', async () => {
    const tmp = path.join(dir, 'tmp');
    fs.mkdirSync(tmp);
    const files = ['a', 'b', 'c'].map((n) => path.join(dir, n));
    await Promise.all(files.map((f) => writeFileAtomicAsync(f, `content of ${f}`, tmp)));
    for (const f of files) expect(fs.readFileSync(f, 'utf8')).toBe(`content of ${f}`);
    expect(fs.readdirSync(tmp)).toEqual([]);
  });

  it('refuses a temp directory that does not exist, and keeps the old file', async () => {
    const file = path.join(dir, 'kept');
    writeFileAtomic(file, 'old');
    await expect(writeFileAtomicAsync(file, 'new', path.join(dir, 'missing'))).rejects.toThrow(/ENOENT/);
    expect(fs.readFileSync(file, 'utf8')).toBe('old');
  });
});
