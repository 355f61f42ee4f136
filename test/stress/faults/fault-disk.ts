// A real fault layer for a pool's metadata or data file: the file is served by nbdkit (the sh
// plugin, fault-disk.sh) and mounted back as a regular file with nbdfuse, so the pool's own
// pwrite and fsync syscalls fail with the errno injected into nbdkit's pwrite or flush.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export type FaultOp = 'pwrite' | 'flush';
export type FaultErrno = 'EIO' | 'ENOSPC';

export interface Fault {
  op: FaultOp;
  errno: FaultErrno;
  /** Calls of `op` that still succeed before the first failure (default 0). */
  skip?: number;
  /** Fail only calls at this byte offset (pwrite; 0 is the superblock of a metadata file). */
  offset?: number;
}

/** The repository root, found from wherever this file was compiled to. */
export function repoRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`no package.json above ${__dirname}`);
    dir = up;
  }
  return dir;
}

const SCRIPT = path.join(repoRoot(), 'test', 'stress', 'faults', 'fault-disk.sh');
const PATH = `/usr/bin:/usr/sbin:/sbin:/bin:${process.env.PATH ?? ''}`;

export class FaultDisk {
  private stderrText = '';
  private exited = false;

  private constructor(
    private readonly child: ChildProcess,
    private readonly mountDir: string,
    private readonly triggers: string,
    /** The FUSE file the pool uses in place of the image. */
    readonly file: string,
  ) {
    child.stderr?.on('data', (chunk: Buffer) => {
      // Bounded: a long campaign must not grow this without end.
      this.stderrText = (this.stderrText + chunk.toString()).slice(-20_000);
    });
    child.once('exit', () => (this.exited = true));
  }

  /** Serves `image` through nbdkit and nbdfuse under `workDir`; resolves once the file is there. */
  static async start(image: string, workDir: string): Promise<FaultDisk> {
    const mountDir = path.join(workDir, 'mnt');
    const triggers = path.join(workDir, 'triggers');
    fs.mkdirSync(mountDir, { recursive: true });
    fs.mkdirSync(triggers, { recursive: true });
    const file = path.join(mountDir, 'disk');
    const child = spawn('nbdfuse', [file, '--command', 'nbdkit', '-s', '--exit-with-parent', 'sh', SCRIPT], {
      env: { ...process.env, PATH, FAULT_DISK_IMAGE: image, FAULT_DISK_TRIGGERS: triggers },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const disk = new FaultDisk(child, mountDir, triggers, file);
    const size = fs.statSync(image).size;
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (disk.exited) throw new Error(`nbdfuse exited before mounting: ${disk.stderrText}`);
      if (fileSize(file) === size) return disk;
      if (Date.now() > deadline) {
        await disk.stop();
        throw new Error(`nbdfuse did not mount ${file} within 15 s: ${disk.stderrText}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  inject(fault: Fault): void {
    const line = `${fault.errno} ${fault.skip ?? 0} ${fault.offset ?? 'any'}\n`;
    // Written whole and renamed in place: the script must never read half a line.
    const tmp = path.join(this.triggers, `.${fault.op}.tmp`);
    fs.writeFileSync(tmp, line);
    fs.renameSync(tmp, path.join(this.triggers, fault.op));
  }

  clear(): void {
    for (const op of ['pwrite', 'flush']) fs.rmSync(path.join(this.triggers, op), { force: true });
  }

  /** Failures injected so far. */
  hits(): number {
    try {
      return fs.readFileSync(path.join(this.triggers, 'hits'), 'utf8').split('\n').filter(Boolean).length;
    } catch {
      return 0;
    }
  }

  /** What nbdfuse and nbdkit printed (shown when a case fails). */
  get stderr(): string {
    return this.stderrText;
  }

  /** Unmounts and waits for nbdfuse (and with it nbdkit) to exit; safe to call twice. */
  async stop(): Promise<void> {
    this.clear();
    if (!this.exited) {
      for (const args of [['-u'], ['-u', '-z']]) {
        try {
          execFileSync('fusermount3', [...args, this.mountDir], {
            stdio: 'ignore',
            env: { ...process.env, PATH },
          });
          break;
        } catch {
          // Busy (a file still open): the lazy unmount below detaches it anyway.
        }
      }
    }
    const gone = new Promise<void>((resolve) =>
      this.exited ? resolve() : this.child.once('exit', () => resolve()),
    );
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await gone;
    clearTimeout(timer);
  }
}

function fileSize(file: string): number | undefined {
  try {
    return fs.statSync(file).size;
  } catch {
    return undefined;
  }
}
