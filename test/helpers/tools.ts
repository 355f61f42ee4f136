/**
 * Locating and running the external thin-provisioning-tools used as oracles
 * by the tests: the system's 0.9.x package (Debian bookworm) and the 1.1.x
 * one from Debian trixie that `scripts/setup` unpacks into `.tools/trixie`.
 */
import { execFile } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

/** Repository root: the nearest folder above with a package.json (this file may also run compiled, from dist/). */
export const REPO_ROOT = findRepoRoot(__dirname);

function findRepoRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) return path.resolve(from, '../..');
  }
}

/** Where scripts/setup unpacks trixie's thin-provisioning-tools. */
export const TRIXIE_ROOT = path.join(REPO_ROOT, '.tools', 'trixie');

export type ThinToolName =
  | 'thin_check'
  | 'thin_dump'
  | 'thin_restore'
  | 'thin_ls'
  | 'thin_delta'
  | 'thin_rmap'
  | 'era_check'
  | 'era_dump'
  | 'era_invalidate';
export type ThinToolVersion = '0.9' | '1.1';

const SETUP_HINT = 'run scripts/setup as root';

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** Directories searched for the system tools: PATH, then the usual sbin folders (often missing from a non-root PATH). */
function systemSearchDirs(): string[] {
  const fromPath = (process.env.PATH ?? '').split(path.delimiter).filter((d) => d !== '');
  const dirs = [...fromPath, '/usr/sbin', '/sbin'];
  return [...new Set(dirs)].filter((d) => path.resolve(d) !== path.resolve(TRIXIE_ROOT, 'usr', 'sbin'));
}

/**
 * Absolute path of one of the thin-provisioning-tools binaries.
 * '0.9' is the system's package, '1.1' the unpacked trixie package.
 * Throws if the binary is not there.
 */
export function thinTool(name: ThinToolName, version: ThinToolVersion): string {
  if (version === '1.1') {
    const file = path.join(TRIXIE_ROOT, 'usr', 'sbin', name);
    if (!isExecutable(file)) {
      throw new Error(`${name} 1.1 not found at ${file}: ${SETUP_HINT}`);
    }
    return file;
  }
  for (const dir of systemSearchDirs()) {
    const file = path.join(dir, name);
    if (isExecutable(file)) return file;
  }
  throw new Error(`${name} 0.9 (package thin-provisioning-tools) not found on this system: ${SETUP_HINT}`);
}

/** Paths of both thin_check binaries. */
export function thinTools(): { v09: string; v11: string } {
  return { v09: thinTool('thin_check', '0.9'), v11: thinTool('thin_check', '1.1') };
}

export interface RunToolOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Kill the process after this many milliseconds (0 = no limit). */
  timeoutMs?: number;
  /** Data written to the child's stdin (stdin is closed either way). */
  input?: string | Buffer;
  /** Largest stdout/stderr kept, in bytes; default 512 MiB. */
  maxBuffer?: number;
}

export interface RunToolResult {
  /** Exit code; for a process ended by a signal, 128 + the signal number as a shell reports it. */
  code: number;
  /** Signal that ended the process, if any. */
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Run a program and collect its output. Resolves for any exit status,
 * non-zero included; rejects only when the program could not be run at all
 * (e.g. not found) or its output outgrew maxBuffer.
 */
export function runTool(cmd: string, args: string[], opts: RunToolOptions = {}): Promise<RunToolResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      {
        cwd: opts.cwd,
        env: opts.env,
        timeout: opts.timeoutMs ?? 0,
        maxBuffer: opts.maxBuffer ?? 512 * 1024 * 1024,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        if (!err) {
          resolve({ code: 0, signal: null, stdout, stderr });
          return;
        }
        const e = err as NodeJS.ErrnoException & { code?: number | string; signal?: NodeJS.Signals | null };
        if (typeof e.code === 'number') {
          resolve({ code: e.code, signal: null, stdout, stderr });
          return;
        }
        if (e.signal && e.code == null) {
          const num = os.constants.signals[e.signal] ?? 0;
          resolve({ code: 128 + num, signal: e.signal, stdout, stderr });
          return;
        }
        reject(new Error(`${cmd} ${args.join(' ')}: ${e.message}`, { cause: err }));
      },
    );
    // A child that exits without reading its stdin makes the write fail with EPIPE; that is not an error here.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(opts.input);
  });
}
