// Turning an NBD export into a local block device. Two ways:
// - kernel: `nbd-client` on /dev/nbdN, when the nbd module is loaded (the production path),
//   with nbd-reconnect beside it to survive restarts of the NBD server;
// - nbdfuse: `nbdfuse` exposes the export as a file on a FUSE mount, `losetup` makes it a
//   loop device. The file's size is fixed while nbdfuse runs, so this path opens the grant's
//   growable view (a large window onto the volume) and caps the loop device at the volume's
//   real size; growing raises the cap (LOOP_SET_STATUS64) while the filesystem stays mounted.
import fs from 'node:fs';
import path from 'node:path';
import { logger } from '../log';
import { ExecError, processAlive, run, spawnDetached } from '../exec';

const log = logger('attach');

export type Method = 'kernel' | 'nbdfuse';

export interface Grant {
  /** host:port of the NBD server. */
  endpoint: string;
  /** `<export>/<secret>` at the volume's real size. */
  exportName: string;
  /** `<export>.grow/<secret>`: the growable view for nbdfuse. */
  growableExportName: string;
  readOnly: boolean;
}

export interface Attachment {
  method: Method;
  device: string;
  /** nbdfuse: where the FUSE file system is mounted, and its pid. */
  fuseDir?: string;
  fusePid?: number;
  /** kernel: the pid of the device's nbd-reconnect. */
  helperPid?: number;
}

/** Why attaching failed, in terms the CSI layer turns into a status code. */
export type AttachFailure = 'refused' | 'unreachable' | 'failed';

/** An attach that failed; the message names the export without its secret. */
export class AttachError extends Error {
  constructor(
    readonly reason: AttachFailure,
    message: string,
  ) {
    super(message);
    this.name = 'AttachError';
  }
}

/**
 * What to hide of an export name that carries an access secret (`<export>/<secret>`): the whole
 * name, plain and URI-encoded (hiding only the secret would also blot out any short secret's
 * letters elsewhere in a message).
 */
export function secretOf(exportName: string): string[] {
  if (exportName.lastIndexOf('/') <= 0) return [];
  return [exportName, exportName.split('/').map(encodeURIComponent).join('/')];
}

// nbd-client's and nbdinfo's words for a server that refused the export or was not there.
const REFUSED =
  /no such export|has no export|not found|policy prevents|not allowed|permission denied|access denied|EPERM|EACCES/i;
const UNREACHABLE = /connection refused|timed out|no route|unreachable|could not resolve|name or service/i;

function attachError(what: string, grant: Grant, e: unknown): AttachError {
  const text = e instanceof ExecError ? e.stderr.trim() || e.reason : (e as Error).message;
  // nbd-client ends its complaint with a line "Exiting."
  const detail = text.replace(/\s*\n\s*/g, ' ').replace(/\s*Exiting\.$/, '');
  const reason: AttachFailure = REFUSED.test(detail)
    ? 'refused'
    : UNREACHABLE.test(detail)
      ? 'unreachable'
      : 'failed';
  const cut = grant.exportName.lastIndexOf('/');
  const name = cut > 0 ? `${grant.exportName.slice(0, cut)}/…` : grant.exportName;
  return new AttachError(reason, `${what} of export ${name} from ${grant.endpoint} failed: ${detail}`);
}

export function kernelNbdAvailable(): boolean {
  return fs.existsSync('/sys/module/nbd');
}

export function chooseMethod(wanted: 'auto' | Method): Method {
  if (wanted !== 'auto') return wanted;
  return kernelNbdAvailable() ? 'kernel' : 'nbdfuse';
}

function splitEndpoint(endpoint: string): { host: string; port: string } {
  const cut = endpoint.lastIndexOf(':');
  return { host: endpoint.slice(0, cut).replace(/^\[|\]$/g, ''), port: endpoint.slice(cut + 1) };
}

export function nbdUri(endpoint: string, exportName: string): string {
  const { host, port } = splitEndpoint(endpoint);
  const h = host.includes(':') ? `[${host}]` : host;
  return `nbd://${h}:${port}/${exportName.split('/').map(encodeURIComponent).join('/')}`;
}

/** The export's current size, asked of the server (follows ControllerExpandVolume). */
export async function exportSizeBytes(grant: Grant): Promise<number> {
  const { stdout } = await run('nbdinfo', ['--size', nbdUri(grant.endpoint, grant.exportName)], {
    quiet: true,
    secrets: secretOf(grant.exportName),
  }).catch((e: unknown) => {
    throw attachError('asking the size', grant, e);
  });
  return Number(stdout.trim());
}

// `losetup -f` picks the first free device; two at once could pick the same one.
let loopQueue: Promise<unknown> = Promise.resolve();
function serialLoop<T>(fn: () => Promise<T>): Promise<T> {
  const next = loopQueue.then(fn, fn);
  loopQueue = next.catch(() => undefined);
  return next;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** How kernel attachments deal with a connection to the NBD server that dies. */
export interface KernelOptions {
  /** nbd-client -t: a request unanswered this long marks the connection dead and is requeued. */
  requestTimeoutSeconds: number;
  /** While no connection is alive, I/O waits this long for the helper to reconnect, then fails. */
  deadConnectionTimeoutSeconds: number;
  /** The nbd-reconnect program (a name looked up in PATH, or a path). */
  reconnectHelper: string;
}

export async function attach(
  grant: Grant,
  method: Method,
  workDir: string,
  kernel: KernelOptions,
): Promise<Attachment> {
  return method === 'kernel' ? attachKernel(grant, workDir, kernel) : attachFuse(grant, workDir);
}

async function attachFuse(grant: Grant, workDir: string): Promise<Attachment> {
  const fuseDir = path.join(workDir, 'fuse');
  fs.mkdirSync(fuseDir, { recursive: true });
  const pidFile = path.join(workDir, 'nbdfuse.pid');
  fs.rmSync(pidFile, { force: true });
  const size = await exportSizeBytes(grant);
  const args = [
    '-P',
    pidFile,
    ...(grant.readOnly ? ['-r'] : []),
    path.join(fuseDir, 'disk'),
    nbdUri(grant.endpoint, grant.growableExportName),
  ];
  const fusePid = await spawnDetached('nbdfuse', args, {
    logFile: path.join(workDir, 'nbdfuse.log'),
    ready: () => fs.existsSync(pidFile),
    secrets: secretOf(grant.growableExportName),
  }).catch((e: unknown) => {
    throw attachError('nbdfuse', grant, e);
  });
  try {
    const device = await serialLoop(async () => {
      const { stdout } = await run('losetup', [
        '-f',
        '--show',
        '--direct-io=on',
        '--sizelimit',
        String(size),
        ...(grant.readOnly ? ['-r'] : []),
        path.join(fuseDir, 'disk'),
      ]);
      return stdout.trim();
    });
    return { method: 'nbdfuse', device, fuseDir, fusePid };
  } catch (e) {
    await stopFuse(fuseDir, fusePid).catch(() => undefined);
    throw e;
  }
}

async function freeNbdDevice(): Promise<string> {
  for (let i = 0; i < 1024; i++) {
    const sys = `/sys/block/nbd${i}`;
    if (!fs.existsSync(sys)) break;
    if (fs.existsSync(`${sys}/pid`)) continue;
    if (Number(fs.readFileSync(`${sys}/size`, 'utf8').trim()) === 0) return `/dev/nbd${i}`;
  }
  throw new Error('no free /dev/nbdN device (load nbd with more nbds_max)');
}

/**
 * Attaches through netlink (nbd-client's default mode) with a request timeout, then starts
 * nbd-reconnect for the device: it sets the dead-connection timeout and hands the kernel a
 * new socket whenever the connection dies, so a restart of the NBD server stalls I/O instead
 * of failing it (docs/node.md).
 */
async function attachKernel(grant: Grant, workDir: string, opts: KernelOptions): Promise<Attachment> {
  const { host, port } = splitEndpoint(grant.endpoint);
  return serialLoop(async () => {
    const device = await freeNbdDevice();
    // prettier-ignore
    const args = [
      host, port, device, '-N', grant.exportName, '-b', '4096', '-t', String(opts.requestTimeoutSeconds),
      ...(grant.readOnly ? ['-readonly'] : []),
    ];
    await run('nbd-client', args, { secrets: secretOf(grant.exportName) }).catch((e: unknown) => {
      throw attachError(`nbd-client attach to ${device}`, grant, e);
    });
    try {
      await waitForSize(device);
      const helperPid = await startHelper(device, grant, workDir, opts);
      return { method: 'kernel' as const, device, helperPid };
    } catch (e) {
      await run('nbd-client', ['-d', device]).catch(() => undefined);
      throw e;
    }
  });
}

/** `resume`: the helper replaces one that died, and the link may have died meanwhile. */
async function startHelper(
  device: string,
  grant: Grant,
  workDir: string,
  opts: KernelOptions,
  resume = false,
): Promise<number> {
  const { host, port } = splitEndpoint(grant.endpoint);
  const helperLog = path.join(workDir, 'nbd-reconnect.log');
  const start = fs.existsSync(helperLog) ? fs.statSync(helperLog).size : 0;
  const started = () => {
    const fd = fs.openSync(helperLog, 'r');
    try {
      const buf = Buffer.alloc(Math.max(0, fs.fstatSync(fd).size - start));
      fs.readSync(fd, buf, 0, buf.length, start);
      return buf.includes('watching');
    } finally {
      fs.closeSync(fd);
    }
  };
  return spawnDetached(
    opts.reconnectHelper,
    [
      '-D',
      String(opts.deadConnectionTimeoutSeconds),
      ...(resume ? ['-r'] : []),
      String(nbdIndex(device)),
      host,
      port,
      '-',
    ],
    {
      logFile: helperLog,
      env: { NBD_EXPORT_NAME: grant.exportName },
      secrets: secretOf(grant.exportName),
      ready: started,
    },
  ).catch((e: Error) => {
    throw new AttachError(
      'failed',
      `${device} is attached but its reconnection helper failed (${opts.reconnectHelper}, ` +
        `built from native/nbd-reconnect.c): ${e.message}`,
    );
  });
}

/**
 * A kernel attachment that outlived its helper (the node plugin's container restarted and took
 * the helper with it) gets a new one; returns the attachment as it is now.
 */
export async function resumeAttachment(
  a: Attachment,
  grant: Grant,
  workDir: string,
  opts: KernelOptions,
): Promise<Attachment> {
  if (a.method !== 'kernel' || helperRunning(a.helperPid)) return a;
  if (!fs.existsSync(`/sys/block/${path.basename(a.device)}/pid`)) return a;
  const helperPid = await startHelper(a.device, grant, workDir, opts, true);
  log.info('restarted the reconnection helper', { device: a.device, pid: helperPid });
  return { ...a, helperPid };
}

function nbdIndex(device: string): number {
  return Number(/^\/dev\/nbd(\d+)$/.exec(device)?.[1] ?? NaN);
}

function sectors(device: string): number {
  return Number(fs.readFileSync(`/sys/block/${path.basename(device)}/size`, 'utf8').trim());
}

async function waitForSize(device: string): Promise<void> {
  for (let i = 0; sectors(device) === 0; i++) {
    if (i >= 200) throw new Error(`${device} still has no size 10 s after nbd-client connected`);
    await sleep(50);
  }
}

function helperRunning(pid: number | undefined): pid is number {
  if (!pid || !processAlive(pid)) return false;
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('nbd-reconnect');
  } catch {
    return false;
  }
}

/** Stops a kernel attachment's reconnection helper, if that pid is still the helper. */
async function stopHelper(a: Attachment): Promise<void> {
  const pid = a.helperPid;
  if (!helperRunning(pid)) return;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; processAlive(pid) && i < 100; i++) await sleep(20);
}

async function stopFuse(fuseDir: string, pid: number | undefined): Promise<void> {
  // The loop device lets go of the file asynchronously; retry the unmount for a while.
  for (let i = 0; ; i++) {
    try {
      await run('fusermount3', ['-u', fuseDir], { quiet: true });
      break;
    } catch (e) {
      if (!fs.existsSync(fuseDir) || !(await fuseMounted(fuseDir))) break;
      if (i >= 50) throw e;
      await sleep(100);
    }
  }
  for (let i = 0; pid && processAlive(pid) && i < 100; i++) await sleep(50);
  if (pid && processAlive(pid)) {
    log.warn('nbdfuse still running after unmount; sending SIGTERM', { pid });
    process.kill(pid, 'SIGTERM');
  }
}

async function fuseMounted(dir: string): Promise<boolean> {
  const mounts = fs.readFileSync('/proc/self/mounts', 'utf8');
  return mounts.split('\n').some((l) => l.split(' ')[1] === dir);
}

/** Undoes `attach`; safe to repeat. */
export async function detach(a: Attachment): Promise<void> {
  if (a.method === 'kernel') {
    // The helper first, so that it does not take the disconnect for a dead link.
    await stopHelper(a);
    if (fs.existsSync(`/sys/block/${path.basename(a.device)}/pid`)) await run('nbd-client', ['-d', a.device]);
    return;
  }
  const backing = await loopBacking(a.device);
  if (backing !== undefined && a.fuseDir && backing.startsWith(a.fuseDir))
    await run('losetup', ['-d', a.device]);
  if (a.fuseDir) await stopFuse(a.fuseDir, a.fusePid);
}

async function loopBacking(device: string): Promise<string | undefined> {
  const sys = `/sys/block/${path.basename(device)}/loop/backing_file`;
  return fs.existsSync(sys) ? fs.readFileSync(sys, 'utf8').trim() : undefined;
}

// struct loop_info64 is 232 bytes with lo_sizelimit at offset 32. perl (perl-base is part of
// every Debian system) issues the ioctls for us.
const LOOP_SET_SIZELIMIT = [
  'open(my $f, "+<", $ARGV[0]) or die "open $ARGV[0]: $!\\n";',
  'my $b = "\\0" x 232;',
  'ioctl($f, 0x4C05, $b) or die "LOOP_GET_STATUS64: $!\\n";',
  'substr($b, 32, 8) = pack("Q<", $ARGV[1]);',
  'ioctl($f, 0x4C04, $b) or die "LOOP_SET_STATUS64: $!\\n";',
].join(' ');

/** Makes the attached device as large as the export is now; returns the new size. */
export async function growAttachment(a: Attachment, grant: Grant, kernel: KernelOptions): Promise<number> {
  const size = await exportSizeBytes(grant);
  if (size <= sectors(a.device) * 512) return size;
  // Netlink-attached devices refuse NBD_SET_SIZE; the helper sends NBD_CMD_RECONFIGURE.
  if (a.method === 'kernel')
    await run(kernel.reconnectHelper, ['-s', String(size), String(nbdIndex(a.device))]);
  else await run('perl', ['-e', LOOP_SET_SIZELIMIT, a.device, String(size)]);
  return size;
}
