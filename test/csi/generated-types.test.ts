// src/csi/generated/ is what proto-loader's type generator makes of proto/csi.proto today:
// a proto change without `bash scripts/csi-gen-types` fails here.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { makeTempDir } from '../helpers/tmp';

const ROOT = path.resolve(__dirname, '../..');

function files(dir: string, prefix = ''): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) =>
      e.isDirectory() ? files(path.join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`],
    )
    .sort();
}

test('src/csi/generated matches proto/csi.proto (else: bash scripts/csi-gen-types)', () => {
  const tmp = makeTempDir();
  try {
    const out = path.join(tmp.dir, 'generated');
    execFileSync('bash', [path.join(ROOT, 'scripts/csi-gen-types'), out], { cwd: ROOT });
    const checkedIn = path.join(ROOT, 'src/csi/generated');
    expect(files(checkedIn)).toEqual(files(out));
    for (const f of files(out))
      expect([f, fs.readFileSync(path.join(checkedIn, f), 'utf8')]).toEqual([
        f,
        fs.readFileSync(path.join(out, f), 'utf8'),
      ]);
  } finally {
    tmp.cleanup();
  }
});
