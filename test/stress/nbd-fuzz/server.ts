// The server under fuzz: a real `thinpool nbd serve` process over a real thin pool made with
// the CLI, its resident memory read from /proc while it runs, and its metrics endpoint.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { REPO_ROOT, runTool } from '../../helpers/tools';

export const CLI = path.join(REPO_ROOT, 'dist', 'cli', 'main.js');
const MiB = 1024 * 1024;

/** Device ids and sizes of the pool: the good clients' volume, the fuzzers' volume, its snapshot. */
export const DEVICES = {
  good: { id: 1, sizeBytes: 64 * MiB },
  fuzz: { id: 2, sizeBytes: 32 * MiB },
  snap: { id: 3, sizeBytes: 32 * MiB },
};

async function thinpool(args: string[]): Promise<string> {
  const result = await runTool(process.execPath, [CLI, ...args], { timeoutMs: 60_000 });
  if (result.code !== 0) throw new Error(`thinpool ${args.join(' ')}: ${result.stderr}${result.stdout}`);
  return result.stdout;
}

/** Creates the pool and its three devices (the snapshot taken after some data was written). */
export async function createPool(poolDir: string): Promise<void> {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
  await thinpool(['pool', 'create', poolDir, '--data-size', '1G']);
  await thinpool(['thin', 'create', poolDir, String(DEVICES.good.id), '--size', '64M']);
  await thinpool(['thin', 'create', poolDir, String(DEVICES.fuzz.id), '--size', '32M']);
  await thinpool(['thin', 'snap', poolDir, String(DEVICES.snap.id), String(DEVICES.fuzz.id)]);
}

/** `thinpool pool check`: the metadata must be clean after the campaign. */
export async function checkPool(poolDir: string): Promise<{ ok: boolean; text: string }> {
  const result = await runTool(process.execPath, [CLI, 'pool', 'check', poolDir], { timeoutMs: 120_000 });
  return { ok: result.code === 0, text: (result.stdout + result.stderr).trim() };
}

export class ServerProcess {
  private child: ChildProcess | undefined;
  private stdout = '';
  exitCode: number | null | undefined;
  exitSignal: NodeJS.Signals | null = null;
  exited: Promise<void> = Promise.resolve();
  port = 0;
  metricsPort = 0;

  constructor(
    private readonly poolDir: string,
    private readonly logFile: string,
    private readonly logLevel: string,
  ) {}

  /** Starts the server and resolves once it prints where it listens. */
  async start(): Promise<void> {
    const log = fs.openSync(this.logFile, 'a');
    const child = spawn(
      process.execPath,
      [
        CLI,
        'nbd',
        'serve',
        this.poolDir,
        '--listen',
        '127.0.0.1:0',
        '--metrics-listen',
        '127.0.0.1:0',
        '--export',
        `good=${DEVICES.good.id}`,
        '--export',
        `fuzz=${DEVICES.fuzz.id}`,
        '--export',
        `snap=${DEVICES.snap.id}:ro`,
      ],
      {
        stdio: ['ignore', 'pipe', log],
        env: { ...process.env, THINPOOL_LOG_LEVEL: this.logLevel, THINPOOL_LOG_FORMAT: 'json' },
      },
    );
    fs.closeSync(log);
    this.child = child;
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        this.exitCode = code;
        this.exitSignal = signal;
        resolve();
      }),
    );
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('server did not start in 30 s')), 30_000);
      child.stdout!.on('data', (chunk: Buffer) => {
        this.stdout += chunk.toString();
        const listening = /listening 127\.0\.0\.1:(\d+)/.exec(this.stdout);
        const metrics = /metrics 127\.0\.0\.1:(\d+)/.exec(this.stdout);
        if (listening && metrics) {
          this.port = Number(listening[1]);
          this.metricsPort = Number(metrics[1]);
          clearTimeout(timer);
          resolve();
        }
      });
      void this.exited.then(() => reject(new Error(`server exited at start (${this.exitCode})`)));
    });
  }

  get pid(): number {
    return this.child?.pid ?? 0;
  }

  get alive(): boolean {
    return this.child !== undefined && this.exitCode === undefined;
  }

  /** Resident set size in bytes, from /proc (Linux), or undefined once the process is gone. */
  rssBytes(): number | undefined {
    try {
      const status = fs.readFileSync(`/proc/${this.pid}/status`, 'utf8');
      const kib = /^VmRSS:\s+(\d+) kB/m.exec(status);
      return kib ? Number(kib[1]) * 1024 : undefined;
    } catch {
      return undefined;
    }
  }

  /** The Prometheus text of /metrics. */
  metrics(): Promise<string> {
    return new Promise((resolve, reject) => {
      const request = http.get({ host: '127.0.0.1', port: this.metricsPort, path: '/metrics' }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve(body));
      });
      request.on('error', reject);
      request.setTimeout(10_000, () => request.destroy(new Error('metrics timed out')));
    });
  }

  /** Open client connections as the server counts them. */
  async connections(): Promise<number> {
    const m = /^thinpool_nbd_connections(?:\{[^}]*\})? (\d+)/m.exec(await this.metrics());
    return m ? Number(m[1]) : NaN;
  }

  /** SIGTERM (the orderly shutdown commits the pool); resolves with whether it exited cleanly. */
  async stop(timeoutMs: number): Promise<boolean> {
    if (!this.alive) return false;
    this.child!.kill('SIGTERM');
    const timer = setTimeout(() => this.child?.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(timer);
    return this.exitCode === 0;
  }
}

/** Samples a value at a fixed interval; summarises peak and first-vs-last-quarter growth. */
export class Sampler {
  readonly samples: number[] = [];
  private timer: NodeJS.Timeout | undefined;

  start(read: () => number | undefined, intervalMs: number): void {
    this.timer = setInterval(() => {
      const value = read();
      if (value !== undefined) this.samples.push(value);
    }, intervalMs);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  get peak(): number {
    return Math.max(...this.samples);
  }

  /** Mean of the last quarter of samples minus the mean of the first quarter. */
  /**
   * Mean RSS of the second quarter of the run against the last: the first quarter is warm-up
   * (caches and the buffer pool fill there), so growth after it is what a leak would show.
   */
  get growthAfterWarmup(): { first: number; last: number; growth: number } {
    const quarter = Math.max(1, Math.floor(this.samples.length / 4));
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const first = mean(this.samples.slice(quarter, 2 * quarter));
    const last = mean(this.samples.slice(-quarter));
    return { first, last, growth: last - first };
  }
}
