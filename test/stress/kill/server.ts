// The real driver process (`thinpool serve --role all`) on the campaign's pool, with its output
// kept in memory and shown only when something fails.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from '../../helpers/tools';

export const CLI = path.join(REPO_ROOT, 'dist', 'cli', 'main.js');
const KEEP_BYTES = 64 * 1024;

export interface ServerPaths {
  poolDir: string;
  socket: string;
  stateDir: string;
  workDir: string;
}

export const NODE_ID = 'stress-node';

export class DriverProcess {
  private child: ChildProcess | undefined;
  private output = '';
  exited: Promise<void> = Promise.resolve();

  constructor(private readonly paths: ServerPaths) {
    if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
  }

  start(): void {
    const p = this.paths;
    this.output = '';
    const child = spawn(
      process.execPath,
      [
        CLI,
        'serve',
        '--role',
        'all',
        '--pool-dir',
        p.poolDir,
        '--pool-size',
        '1G',
        '--endpoint',
        p.socket,
        '--nbd-host',
        '127.0.0.1',
        '--nbd-port',
        '0',
        '--node-id',
        NODE_ID,
        '--state-dir',
        p.stateDir,
        '--kubelet-dirs',
        p.workDir,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, THINPOOL_LOG_FORMAT: 'json' } },
    );
    const keep = (d: Buffer) => {
      this.output += d.toString();
      if (this.output.length > KEEP_BYTES) this.output = this.output.slice(-KEEP_BYTES);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    this.child = child;
  }

  get alive(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The driver's output since it started (the tail). */
  get log(): string {
    return this.output;
  }

  /** SIGKILL, and wait until the process is gone. */
  async kill(): Promise<void> {
    if (this.alive) this.child!.kill('SIGKILL');
    await this.exited;
  }

  /** Graceful stop at the end of the campaign. */
  async stop(): Promise<void> {
    if (this.alive) this.child!.kill('SIGTERM');
    await this.exited;
  }
}
