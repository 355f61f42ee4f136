// A real filesystem on an export, without the nbd kernel module: nbdfuse exposes the export
// as a file, a loop device (direct I/O, so every block reaches the server) turns it into a
// block device, then mkfs → mount → write a tree → unmount → reconnect → fsck → verify.
// Needs root, /dev/fuse and loop devices.
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, readlink, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { startTestServer, type TestServer, tool } from './helpers';

const MiB = 1024 * 1024;

interface Attached {
  fuse: ChildProcess;
  fuseDir: string;
  loop: string;
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function attach(t: TestServer, exportName: string, tag: string): Promise<Attached> {
  const fuseDir = path.join(t.dir, `fuse-${tag}`);
  await mkdir(fuseDir, { recursive: true });
  const pidFile = path.join(t.dir, `nbdfuse-${tag}.pid`);
  const fuse = spawn('nbdfuse', ['-P', pidFile, path.join(fuseDir, 'disk'), t.uri(exportName)], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  await waitFor(() => existsSync(pidFile) || fuse.exitCode !== null, 'nbdfuse');
  if (fuse.exitCode !== null) throw new Error(`nbdfuse exited with ${fuse.exitCode}`);
  const { stdout } = await tool('losetup', ['-f', '--show', '--direct-io=on', path.join(fuseDir, 'disk')]);
  return { fuse, fuseDir, loop: stdout.trim() };
}

async function detach(attached: Attached): Promise<void> {
  await tool('losetup', ['-d', attached.loop]).catch(() => undefined);
  // The loop device lets go of the file asynchronously; retry the unmount briefly.
  for (let i = 0; i < 50; i++) {
    try {
      await tool('fusermount3', ['-u', attached.fuseDir]);
      break;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  await waitFor(() => attached.fuse.exitCode !== null, 'nbdfuse to exit');
}

/** Writes a small tree of random files; returns relative path → sha256 (or link target). */
async function writeTree(root: string): Promise<Map<string, string>> {
  const expected = new Map<string, string>();
  for (let d = 0; d < 4; d++) {
    const dir = path.join(root, `dir${d}`, `sub${d}`);
    await mkdir(dir, { recursive: true });
    for (let f = 0; f < 6; f++) {
      const size = [0, 1, 4095, 4096, 65537, 3 * MiB + 123][f];
      const data = randomBytes(size);
      const file = path.join(dir, `file${f}.bin`);
      await writeFile(file, data);
      expected.set(path.relative(root, file), createHash('sha256').update(data).digest('hex'));
    }
  }
  await symlink('dir0/sub0/file5.bin', path.join(root, 'link'));
  expected.set('link', '-> dir0/sub0/file5.bin');
  return expected;
}

async function readTree(root: string): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  async function walk(dir: string): Promise<void> {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      const rel = path.relative(root, full);
      if (entry.name === 'lost+found') continue;
      if (entry.isSymbolicLink()) found.set(rel, `-> ${await readlink(full)}`);
      else if (entry.isDirectory()) await walk(full);
      else
        found.set(
          rel,
          createHash('sha256')
            .update(await readFile(full))
            .digest('hex'),
        );
    }
  }
  await walk(root);
  return found;
}

describe.each([
  { fs: 'ext4', mkfs: ['mkfs.ext4', '-q', '-F'], check: ['fsck.ext4', '-n', '-f'] },
  { fs: 'xfs', mkfs: ['mkfs.xfs', '-q', '-f'], check: ['xfs_repair', '-n'] },
])('$fs on nbdfuse + loop over the NBD server', ({ fs, mkfs, check }) => {
  let t: TestServer;
  const live: Attached[] = [];
  const mountPoint = (): string => path.join(t.dir, 'mnt');

  beforeAll(async () => {
    t = await startTestServer({ sizeBytes: 512 * MiB });
    await mkdir(mountPoint());
  });

  afterAll(async () => {
    await tool('umount', [mountPoint()]).catch(() => undefined);
    for (const attached of live) await detach(attached).catch(() => undefined);
    await t.close();
  });

  it(`formats, fills, survives a reconnect and checks clean (${fs})`, async () => {
    const first = await attach(t, 'disk', `${fs}-1`);
    live.push(first);
    await tool(mkfs[0], [...mkfs.slice(1), first.loop], { timeoutMs: 120_000 });
    await tool('mount', [first.loop, mountPoint()]);
    const expected = await writeTree(mountPoint());
    await tool('sync', []);
    await tool('umount', [mountPoint()]);
    await detach(first);
    live.pop();
    // nbdfuse used several connections (multi-conn); all of them must have gone away.
    await waitFor(() => t.server.connectionCount('disk') === 0, 'connections to close');

    const second = await attach(t, 'disk', `${fs}-2`);
    live.push(second);
    // fsck exits non-zero on any inconsistency, which fails the test through tool().
    const fsck = await tool(check[0], [...check.slice(1), second.loop], { timeoutMs: 120_000 });
    expect(fsck.stdout + fsck.stderr).not.toMatch(/corrupt|error/i);
    await tool('mount', ['-o', 'ro', second.loop, mountPoint()]);
    const found = await readTree(mountPoint());
    expect(found).toEqual(expected);
    expect((await stat(path.join(mountPoint(), 'dir3/sub3/file5.bin'))).size).toBe(3 * MiB + 123);
    await tool('umount', [mountPoint()]);
    await detach(second);
    live.pop();
  });
});
