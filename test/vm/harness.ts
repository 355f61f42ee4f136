// The test VM: a Debian kernel and initramfs built by scripts/vm-setup into .tools/vm/, booted
// with QEMU under TCG (never KVM: on these machines /dev/kvm is a software hypervisor that
// cannot run a stock kernel). Each boot appends an overlay cpio with /init, the guest helpers
// and the test's own script; the guest prints marker lines on the serial console:
//
//   VMTEST <key> <value>          a value for the host (see VmResult.markers)
//   VMTEST-RESULT: PASS | FAIL …  the outcome; the guest powers off right after
//
// The host's 127.0.0.1 is 10.0.2.2 in the guest (QEMU user networking); `hostfwd` forwards
// host ports to guest ports.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';

export const ROOT = path.resolve(__dirname, '../..');
export const VM_DIR = path.join(ROOT, '.tools/vm');
export const CLI = path.join(ROOT, 'dist/cli/main.js');
const GUEST_DIR = path.join(__dirname, 'guest');

/** True when scripts/vm-setup has built the VM and qemu-system-x86_64 is installed. */
export function vmReady(): boolean {
  return (
    ['vmlinux', 'initramfs.cpio', 'busybox'].every((f) => fs.existsSync(path.join(VM_DIR, f))) &&
    ['/usr/bin/qemu-system-x86_64', '/usr/bin/timeout'].every((f) => fs.existsSync(f))
  );
}

/**
 * `describe` for VM suites (run by test/vm/run, which builds the VM first): without a built VM
 * they fail loudly rather than skip.
 */
export function describeVm(name: string, fn: () => void): void {
  if (!vmReady()) {
    describe(name, () => {
      it('needs the test VM', () => {
        throw new Error('the test VM is not built: run `sudo bash scripts/vm-setup` first');
      });
    });
    return;
  }
  describe(name, fn);
}

// ---------------------------------------------------------------------------------------------
// cpio (newc) writer for the overlay
// ---------------------------------------------------------------------------------------------

export interface OverlayFile {
  /** Absolute path in the guest. */
  path: string;
  /** Contents (string or bytes), or a host file to copy. */
  data?: string | Buffer;
  hostPath?: string;
  mode?: number;
  /** Make a symbolic link to this target instead of a file. */
  symlink?: string;
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function cpioEntry(name: string, mode: number, data: Buffer, ino: number): Buffer {
  const nameBytes = Buffer.from(`${name}\0`);
  const fields = [ino, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, nameBytes.length, 0];
  const header = Buffer.from('070701' + fields.map((v) => v.toString(16).padStart(8, '0')).join(''));
  return Buffer.concat([
    header,
    nameBytes,
    Buffer.alloc(pad4(header.length + nameBytes.length)),
    data,
    Buffer.alloc(pad4(data.length)),
  ]);
}

/** A newc archive of the files (parent directories are added); appended after the base image. */
export function cpioArchive(files: OverlayFile[]): Buffer {
  const parts: Buffer[] = [];
  const dirs = new Set<string>();
  let ino = 1_000_000;
  const addDir = (dir: string) => {
    if (dir === '/' || dirs.has(dir)) return;
    addDir(path.posix.dirname(dir));
    dirs.add(dir);
    parts.push(cpioEntry(dir.slice(1), 0o040755, Buffer.alloc(0), ino++));
  };
  for (const f of files) {
    addDir(path.posix.dirname(f.path));
    if (f.symlink !== undefined) {
      parts.push(cpioEntry(f.path.slice(1), 0o120777, Buffer.from(f.symlink), ino++));
      continue;
    }
    const data = f.hostPath ? fs.readFileSync(f.hostPath) : Buffer.from(f.data ?? '');
    parts.push(cpioEntry(f.path.slice(1), 0o100000 | (f.mode ?? 0o644), data, ino++));
  }
  parts.push(cpioEntry('TRAILER!!!', 0, Buffer.alloc(0), 0));
  const body = Buffer.concat(parts);
  return Buffer.concat([body, Buffer.alloc(pad4(body.length))]);
}

// ---------------------------------------------------------------------------------------------
// thinpool itself in the guest: Node.js, dist/ and the production dependencies
// ---------------------------------------------------------------------------------------------

/** Where the guest finds the project (run it as `node $APP/dist/cli/main.js`). */
export const GUEST_APP = '/opt/thinpool';

function filesBelow(hostDir: string, guestDir: string): OverlayFile[] {
  const out: OverlayFile[] = [];
  for (const entry of fs.readdirSync(hostDir, { withFileTypes: true })) {
    const host = path.join(hostDir, entry.name);
    const guest = path.posix.join(guestDir, entry.name);
    if (entry.isDirectory()) out.push(...filesBelow(host, guest));
    else if (entry.isSymbolicLink()) out.push({ path: guest, symlink: fs.readlinkSync(host) });
    else if (entry.isFile()) out.push({ path: guest, hostPath: host, mode: fs.statSync(host).mode & 0o777 });
  }
  return out;
}

/** The shared libraries a host binary loads (ldd), as overlay files at the same paths. */
function librariesOf(binary: string): OverlayFile[] {
  const out = execFileSync('ldd', [binary], { encoding: 'utf8' });
  return [...out.matchAll(/(?:=> )?(\/\S+) \(0x/g)].map((m) => ({
    path: m[1],
    hostPath: fs.realpathSync(m[1]),
    mode: 0o755,
  }));
}

let appImageFile: string | undefined;

/**
 * A cpio archive with this machine's Node.js (as /usr/bin/node, with its libraries), the built
 * project and the packages package-lock.json does not mark as development-only. Built once per
 * test process; about 125 MB, so guests that use it need `memoryMb` of 1536 or more.
 */
export function appImage(): string {
  if (appImageFile) return appImageFile;
  const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, { dev?: boolean }>;
  };
  const files: OverlayFile[] = [
    { path: '/usr/bin/node', hostPath: process.execPath, mode: 0o755 },
    ...librariesOf(process.execPath),
    { path: `${GUEST_APP}/package.json`, hostPath: path.join(ROOT, 'package.json') },
    ...filesBelow(path.join(ROOT, 'dist'), `${GUEST_APP}/dist`),
    ...filesBelow(path.join(ROOT, 'proto'), `${GUEST_APP}/proto`),
  ];
  for (const [pkg, meta] of Object.entries(lock.packages)) {
    const dir = path.join(ROOT, pkg);
    if (!pkg.startsWith('node_modules/') || meta.dev || !fs.existsSync(dir)) continue;
    // Nested packages appear as their own lock entries.
    files.push(
      ...filesBelow(dir, `${GUEST_APP}/${pkg}`).filter(
        (f) => !f.path.slice(`${GUEST_APP}/${pkg}/`.length).includes('node_modules/'),
      ),
    );
  }
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'thinpool-vm-app-'));
  appImageFile = path.join(dir, 'app.cpio');
  fs.writeFileSync(appImageFile, cpioArchive(files));
  process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  return appImageFile;
}

// ---------------------------------------------------------------------------------------------
// Booting
// ---------------------------------------------------------------------------------------------

export interface VmOptions {
  /** The guest test script (busybox sh, run with -e from /test). */
  script: string;
  /** More files for the overlay. */
  files?: OverlayFile[];
  /** Values the script sees as $VM_<key> (kernel command line: no spaces). */
  params?: Record<string, string | number>;
  /** Host port → guest port TCP forwards (host side bound on 127.0.0.1). */
  hostfwd?: { host: number; guest: number }[];
  /** Prebuilt cpio archives placed between the base image and the test's overlay. */
  images?: string[];
  /** Whole-run limit; QEMU is killed after it. */
  timeoutMs?: number;
  memoryMb?: number;
  /** Kernel console log level (4: warnings and errors, the default). */
  loglevel?: number;
  /** Where the console is appended as it arrives (for debugging a run; default $THINPOOL_VM_CONSOLE). */
  consoleFile?: string;
}

export interface VmResult {
  passed: boolean;
  /** The text after "VMTEST-RESULT: FAIL", or why there was no result. */
  failure?: string;
  /** VMTEST <key> <value> lines; a repeated key keeps every value in `all`. */
  markers: Record<string, string>;
  all: Record<string, string[]>;
  console: string;
  durationMs: number;
}

export class VmRun {
  readonly started = Date.now();
  private text = '';
  private waiters: { re: RegExp; resolve: (m: RegExpExecArray) => void }[] = [];
  readonly result: Promise<VmResult>;
  private readonly child: ChildProcess;

  constructor(opts: VmOptions) {
    const overlayFile = path.join(
      fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'thinpool-vm-')),
      'overlay.cpio',
    );
    fs.writeFileSync(
      overlayFile,
      Buffer.concat([
        fs.readFileSync(path.join(VM_DIR, 'initramfs.cpio')),
        ...(opts.images ?? []).map((f) => fs.readFileSync(f)),
        cpioArchive([
          { path: '/init', hostPath: path.join(GUEST_DIR, 'init.sh'), mode: 0o755 },
          { path: '/test/lib.sh', hostPath: path.join(GUEST_DIR, 'lib.sh') },
          { path: '/test/run.sh', data: opts.script, mode: 0o755 },
          ...(opts.files ?? []),
        ]),
      ]),
    );
    const params = Object.entries(opts.params ?? {}).map(([k, v]) => {
      if (/\s/.test(String(v))) throw new Error(`VM parameter ${k} contains white space`);
      return `vmtest.${k}=${v}`;
    });
    const fwd = (opts.hostfwd ?? []).map((f) => `,hostfwd=tcp:127.0.0.1:${f.host}-:${f.guest}`).join('');
    const timeoutS = Math.ceil((opts.timeoutMs ?? 120_000) / 1000);
    // prettier-ignore
    const args = [
      '--kill-after=5', String(timeoutS),
      'qemu-system-x86_64', '-accel', 'tcg', '-cpu', 'max', '-m', String(opts.memoryMb ?? 512), '-smp', '1',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-serial', 'stdio', '-monitor', 'none',
      '-kernel', path.join(VM_DIR, 'vmlinux'), '-initrd', overlayFile,
      '-append', ['console=ttyS0', 'panic=-1', `loglevel=${opts.loglevel ?? 4}`, ...params].join(' '),
      '-netdev', `user,id=n0${fwd}`, '-device', 'virtio-net-pci,netdev=n0,romfile=',
    ];
    // Its own process group, so that kill() ends QEMU too and not only `timeout`.
    this.child = spawn('timeout', args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const consoleFile = opts.consoleFile ?? process.env.THINPOOL_VM_CONSOLE;
    const consoleOut = consoleFile ? fs.createWriteStream(consoleFile, { flags: 'a' }) : undefined;
    const onData = (d: Buffer) => {
      const s = d.toString('utf8').replace(/\r/g, '');
      this.text += s;
      consoleOut?.write(s);
      this.waiters = this.waiters.filter((w) => {
        const m = w.re.exec(this.lines);
        if (m) w.resolve(m);
        return !m;
      });
    };
    this.child.stdout!.on('data', onData);
    this.child.stderr!.on('data', onData);
    this.result = new Promise<VmResult>((resolve) => {
      this.child.once('exit', (code, signal) => {
        consoleOut?.end();
        fs.rmSync(path.dirname(overlayFile), { recursive: true, force: true });
        resolve(this.parse(code, signal));
      });
    });
  }

  /** The console so far. */
  get console(): string {
    return this.text;
  }

  /** The complete lines of the console so far (a `$` must not match a line still arriving). */
  private get lines(): string {
    return this.text.slice(0, this.text.lastIndexOf('\n') + 1);
  }

  /** Resolves when the console's complete lines match `re` (checked against everything so far). */
  waitFor(re: RegExp, timeoutMs = 60_000): Promise<RegExpExecArray> {
    const m = re.exec(this.lines);
    if (m) return Promise.resolve(m);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.resolve !== done);
        reject(new Error(`console did not show ${re} within ${timeoutMs} ms\n${tail(this.text)}`));
      }, timeoutMs);
      const done = (match: RegExpExecArray) => {
        clearTimeout(timer);
        resolve(match);
      };
      this.waiters.push({ re, resolve: done });
      void this.result.then(() => {
        if (this.waiters.some((w) => w.resolve === done)) {
          clearTimeout(timer);
          reject(new Error(`the VM stopped before its console showed ${re}\n${tail(this.text)}`));
        }
      });
    });
  }

  /** Ends QEMU at once (no-op when it has already stopped). */
  kill(): void {
    if (this.child.exitCode !== null || this.child.signalCode !== null || !this.child.pid) return;
    try {
      process.kill(-this.child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }

  private parse(code: number | null, signal: NodeJS.Signals | null): VmResult {
    const markers: Record<string, string> = {};
    const all: Record<string, string[]> = {};
    for (const m of this.text.matchAll(/^VMTEST (\S+) ?(.*)$/gm)) {
      markers[m[1]] = m[2];
      (all[m[1]] ??= []).push(m[2]);
    }
    const res = /^VMTEST-RESULT: (PASS|FAIL)(.*)$/m.exec(this.text);
    let failure: string | undefined;
    if (!res) {
      failure =
        code === 124 || code === 137
          ? 'timed out (QEMU killed)'
          : `no result line (QEMU exit ${code ?? signal})`;
    } else if (res[1] === 'FAIL') failure = res[2].trim() || 'FAIL';
    return {
      passed: failure === undefined,
      failure,
      markers,
      all,
      console: this.text,
      durationMs: Date.now() - this.started,
    };
  }
}

/** The last lines of a console, for failure messages. */
export function tail(text: string, lines = 60): string {
  return '--- console (tail) ---\n' + text.trimEnd().split('\n').slice(-lines).join('\n');
}

/** Boots the VM and waits for its result. */
export function runVm(opts: VmOptions): Promise<VmResult> {
  return new VmRun(opts).result;
}

/** Throws with the console tail unless the guest passed. */
export function expectPass(r: VmResult): VmResult {
  if (!r.passed) throw new Error(`guest test failed: ${r.failure} (${r.durationMs} ms)\n${tail(r.console)}`);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Host side: the pool's NBD server and a control channel for the guest
// ---------------------------------------------------------------------------------------------

/** A free TCP port on 127.0.0.1 (closed again: the caller binds it soon after). */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** Runs the built `thinpool` command and returns its stdout (throws on failure). */
export function thinpool(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('exit', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`thinpool ${args.join(' ')}: exit ${code}\n${err}`)),
    );
  });
}

/** `thinpool nbd serve` on 127.0.0.1 that can be stopped and started again on the same port. */
export class NbdServe {
  private child?: ChildProcess;
  metricsPort = 0;
  log = '';

  constructor(
    readonly pool: string,
    readonly exports: string[],
    readonly extraArgs: string[] = [],
    /** 0: pick a free one on the first start (later starts reuse it). */
    public port = 0,
  ) {}

  async start(): Promise<void> {
    if (!this.port) this.port = await freePort();
    if (!this.metricsPort) this.metricsPort = await freePort();
    const args = [CLI, 'nbd', 'serve', this.pool, '--listen', `127.0.0.1:${this.port}`];
    for (const e of this.exports) args.push('--export', e);
    args.push('--metrics-listen', `127.0.0.1:${this.metricsPort}`, ...this.extraArgs);
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    let out = '';
    await new Promise<void>((resolve, reject) => {
      const onExit = (code: number | null) =>
        reject(new Error(`thinpool nbd serve exited with ${code} before listening\n${this.log}`));
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (/^listening /m.test(out)) {
          child.off('exit', onExit);
          resolve();
        }
      });
      child.stderr!.on('data', (d: Buffer) => (this.log += d.toString()));
      child.once('exit', onExit);
    });
  }

  /** Stops the server (SIGTERM: clean; SIGKILL: crash) and waits for the process to end. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<number | null> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return child?.exitCode ?? null;
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill(signal);
    const code = await exited;
    this.child = undefined;
    return code;
  }

  /** The Prometheus text of the server's /metrics. */
  async metrics(): Promise<string> {
    return (await fetch(`http://127.0.0.1:${this.metricsPort}/metrics`)).text();
  }
}

/** Reads a counter such as thinpool_nbd_bytes_total{export="vol",op="trim"} from metrics text. */
export function metric(text: string, name: string, labels: Record<string, string>): number {
  const want = Object.entries(labels);
  for (const line of text.split('\n')) {
    const m = /^(\w+)\{([^}]*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...m[2].matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (want.every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return 0;
}

/** A tiny HTTP key/value store on 127.0.0.1 the guest reads with `ctl <key>` (lib.sh). */
export class ControlServer {
  private readonly values = new Map<string, string>();
  private server?: http.Server;
  port = 0;

  set(key: string, value: string): void {
    this.values.set(key, value);
  }

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      const value = this.values.get((req.url ?? '/').slice(1));
      res.writeHead(value === undefined ? 404 : 200, { 'content-type': 'text/plain' });
      res.end(value ?? '');
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  async stop(): Promise<void> {
    if (this.server) await new Promise((r) => this.server!.close(r));
  }
}

/** Parses `thinpool thin list --json` into id → mapped blocks. */
export async function mappedBlocks(pool: string): Promise<Map<number, number>> {
  const list = JSON.parse(await thinpool(['thin', 'list', pool, '--json'])) as {
    devices: { id: number; details: { mappedBlocks: number } }[];
  };
  return new Map(list.devices.map((d) => [d.id, d.details.mappedBlocks]));
}

export interface ShellResult {
  status: number;
  output: string;
}

/** Runs shell commands in a guest that is in `serve_commands` (lib.sh), one at a time. */
export class GuestShell {
  private next = 1;

  constructor(
    private readonly vm: VmRun,
    private readonly ctl: ControlServer,
  ) {}

  async run(command: string, timeoutMs = 120_000): Promise<ShellResult> {
    const n = this.next++;
    this.ctl.set(`cmd.${n}`, command);
    const done = await this.vm.waitFor(new RegExp(`^VMTEST-DONE ${n} (\\d+)$`, 'm'), timeoutMs);
    const output = [...this.vm.console.matchAll(new RegExp(`^VMTEST-OUT ${n} (.*)$`, 'gm'))]
      .map((m) => m[1])
      .join('\n');
    return { status: Number(done[1]), output };
  }

  /** Like run, but throws unless the command succeeded; returns its output. */
  async ok(command: string, timeoutMs?: number): Promise<string> {
    const r = await this.run(command, timeoutMs);
    if (r.status !== 0) throw new Error(`guest command failed (${r.status}): ${command}\n${r.output}`);
    return r.output;
  }

  /** Ends the command loop (the guest script goes on after serve_commands). */
  exit(): void {
    this.ctl.set(`cmd.${this.next++}`, 'exit');
  }
}

/**
 * `thinpool serve --role controller` (CSI on a unix socket, the pool's NBD server on
 * 127.0.0.1:nbdPort, advertised to guests as 10.0.2.2) as a child process that can be stopped
 * with SIGTERM or SIGKILL and started again on the same pool and port.
 */
export class ControllerProcess {
  private child?: ChildProcess;
  nbdPort = 0;
  readonly endpoint: string;
  readonly logFile: string;

  constructor(
    readonly dir: string,
    readonly poolSize = '2G',
  ) {
    this.endpoint = path.join(dir, 'csi.sock');
    this.logFile = path.join(dir, 'controller.log');
  }

  async start(ready: () => Promise<boolean>): Promise<void> {
    if (!this.nbdPort) this.nbdPort = await freePort();
    // prettier-ignore
    const args = [
      CLI, 'serve', '--role', 'controller', '--endpoint', this.endpoint, '--node-id', 'host',
      '--pool-dir', path.join(this.dir, 'pool'), '--pool-size', this.poolSize,
      '--nbd-host', '127.0.0.1', '--nbd-port', String(this.nbdPort), '--nbd-advertise-host', '10.0.2.2',
      '--state-dir', path.join(this.dir, 'node'), '--kubelet-dirs', path.join(this.dir, 'kubelet'),
    ];
    const out = fs.openSync(this.logFile, 'a');
    const child = spawn(process.execPath, args, { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    this.child = child;
    const deadline = Date.now() + 60_000;
    while (!(await ready().catch(() => false))) {
      if (child.exitCode !== null || Date.now() > deadline)
        throw new Error(`the controller did not start\n${this.log().slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await exited;
    this.child = undefined;
  }

  log(): string {
    return fs.existsSync(this.logFile) ? fs.readFileSync(this.logFile, 'utf8') : '';
  }
}
