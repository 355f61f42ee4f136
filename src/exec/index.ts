// The one way this project runs external programs (mkfs, mount, losetup, nbdfuse, ...):
// execFile with an argument array (never a shell), logged, with failures as typed errors.
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import type { Readable } from 'node:stream';
import { logger } from '../log';

const log = logger('exec');

// Tools live in the sbin directories, which a non-login PATH may lack.
const TOOL_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface RunOptions {
  timeoutMs?: number;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Text for the program's stdin. */
  input?: string;
  /** Exit codes that count as success (default [0]). */
  okExitCodes?: number[];
  /** Log at debug instead of info (for polling commands). */
  quiet?: boolean;
  /** Strings (access secrets in export names) never to show in logs or errors. */
  secrets?: string[];
}

/** Replaces every secret in a text with "…". */
export function scrub(text: string, secrets: readonly string[] = []): string {
  return secrets.filter(Boolean).reduce((t, secret) => t.split(secret).join('…'), text);
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/** A program could not be started, timed out, or exited with a code we did not accept. */
export class ExecError extends Error {
  constructor(
    readonly command: string,
    readonly args: readonly string[],
    readonly exitCode: number | null,
    readonly stderr: string,
    readonly stdout: string,
    readonly reason: string,
  ) {
    super(`${command} ${args.join(' ')}: ${reason}${stderr.trim() ? `: ${stderr.trim()}` : ''}`);
    this.name = 'ExecError';
  }
}

function environment(extra?: Record<string, string>): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${TOOL_PATH}:${process.env.PATH ?? ''}`, LC_ALL: 'C', ...extra };
}

/** Runs `command args…` to completion and returns its output. */
export function run(command: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const started = Date.now();
  const ok = options.okExitCodes ?? [0];
  const shown = args.map((a) => scrub(a, options.secrets));
  return new Promise((resolve, reject) => {
    const child = execFile(
      command,
      args,
      {
        timeout: options.timeoutMs ?? 120_000,
        maxBuffer: 64 * 1024 * 1024,
        env: environment(options.env),
        encoding: 'utf8',
      },
      (error, stdout, stderr) => {
        const exitCode = error === null ? 0 : typeof error.code === 'number' ? error.code : null;
        const ms = Date.now() - started;
        if (exitCode !== null && ok.includes(exitCode)) {
          log.log(options.quiet ? 'debug' : 'info', 'ran', { command, args: shown, exitCode, ms });
          resolve({ stdout, stderr, exitCode });
          return;
        }
        const reason =
          error?.killed || error?.signal
            ? `killed by ${error.signal ?? 'timeout'} after ${ms} ms`
            : exitCode === null
              ? `could not run (${error?.message ?? 'unknown error'})`
              : `exit code ${exitCode}`;
        const err = scrub(stderr, options.secrets);
        log.warn('command failed', {
          command,
          args: shown,
          exitCode,
          reason,
          stderr: err.trim().slice(0, 2000),
        });
        reject(new ExecError(command, shown, exitCode, err, scrub(stdout, options.secrets), reason));
      },
    );
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/**
 * How a detached program says it is ready: a condition polled every 50 ms, or `'fd3'`: it is
 * given a pipe as descriptor 3 and is ready once it writes a line there.
 */
export type Readiness = (() => boolean) | 'fd3';

/**
 * Starts a long-lived helper (e.g. nbdfuse) in its own session so that it outlives this
 * process, and resolves with its pid once it is ready. Its stdout and stderr go to `logFile`.
 */
export async function spawnDetached(
  command: string,
  args: string[],
  options: {
    logFile: string;
    ready: Readiness;
    timeoutMs?: number;
    env?: Record<string, string>;
    secrets?: string[];
  },
): Promise<number> {
  const shown = args.map((a) => scrub(a, options.secrets));
  log.info('starting', { command, args: shown });
  const out = fs.openSync(options.logFile, 'a');
  const child = spawn(command, args, {
    detached: true,
    stdio: ['ignore', out, out, ...(options.ready === 'fd3' ? (['pipe'] as const) : [])],
    env: environment(options.env),
  });
  fs.closeSync(out);
  let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  let spawnError: Error | undefined;
  child.on('exit', (code, signal) => (exit = { code, signal }));
  child.on('error', (e) => (spawnError = e));
  child.unref();
  const readyPipe = options.ready === 'fd3' ? (child.stdio[3] as Readable) : undefined;
  let signalled = false;
  readyPipe?.on('data', (chunk: Buffer) => (signalled ||= chunk.includes('\n')));
  readyPipe?.on('error', () => undefined); // an exit is reported below, with the log's tail
  const ready = options.ready === 'fd3' ? () => signalled : options.ready;
  const deadline = Date.now() + (options.timeoutMs ?? 20_000);
  try {
    for (;;) {
      if (spawnError)
        throw new ExecError(command, shown, null, '', '', `could not run (${spawnError.message})`);
      if (exit) {
        const stderr = fs.existsSync(options.logFile)
          ? scrub(fs.readFileSync(options.logFile, 'utf8').slice(-2000), options.secrets)
          : '';
        throw new ExecError(
          command,
          shown,
          exit.code,
          stderr,
          '',
          `exited early (${exit.code ?? exit.signal})`,
        );
      }
      if (ready()) return child.pid!;
      if (Date.now() > deadline) {
        child.kill('SIGTERM');
        throw new ExecError(command, shown, null, '', '', 'did not become ready in time');
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  } finally {
    // Our end of the pipe would keep this process's event loop alive.
    readyPipe?.destroy();
  }
}
