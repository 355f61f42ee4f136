// Turning an NBD export into a local block device. Two ways:
// - kernel: `nbd-client` on /dev/nbdN, when the nbd module is loaded (the production path);
// - nbdfuse: `nbdfuse` exposes the export as a file on a FUSE mount, `losetup` makes it a
//   loop device. The file's size is fixed while nbdfuse runs, so this path opens the grant's
//   growable view (a large window onto the volume) and caps the loop device at the volume's
//   real size; growing raises the cap (LOOP_SET_STATUS64) while the filesystem stays mounted.
import fs from 'node:fs';
import path from 'node:path';
import { logger } from '../log';
import { processAlive, run, spawnDetached } from '../exec';

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

export async function attach(grant: Grant, method: Method, workDir: string): Promise<Attachment> {
  return method === 'kernel' ? attachKernel(grant) : attachFuse(grant, workDir);
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

async function attachKernel(grant: Grant): Promise<Attachment> {
  const { host, port } = splitEndpoint(grant.endpoint);
  return serialLoop(async () => {
    const device = await freeNbdDevice();
    // -nonetlink: the ioctl interface, so NBD_SET_SIZE can grow the device later.
    await run('nbd-client', [
      host,
      port,
      device,
      '-N',
      grant.exportName,
      '-b',
      '4096',
      '-nonetlink',
      ...(grant.readOnly ? ['-readonly'] : []),
    ]);
    // In ioctl mode nbd-client returns before the kernel has the device's size (it is set when
    // the forked client enters NBD_DO_IT): wait for it, or mkfs would see an empty device.
    const sizeFile = `/sys/block/${path.basename(device)}/size`;
    for (let i = 0; Number(fs.readFileSync(sizeFile, 'utf8').trim()) === 0; i++) {
      if (i >= 200) throw new Error(`${device} still has no size 10 s after nbd-client connected`);
      await sleep(50);
    }
    return { method: 'kernel' as const, device };
  });
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

// struct loop_info64 is 232 bytes with lo_sizelimit at offset 32; NBD_SET_SIZE is _IO(0xab, 2).
// perl (perl-base is part of every Debian system) issues the ioctls for us.
const LOOP_SET_SIZELIMIT = [
  'open(my $f, "+<", $ARGV[0]) or die "open $ARGV[0]: $!\\n";',
  'my $b = "\\0" x 232;',
  'ioctl($f, 0x4C05, $b) or die "LOOP_GET_STATUS64: $!\\n";',
  'substr($b, 32, 8) = pack("Q<", $ARGV[1]);',
  'ioctl($f, 0x4C04, $b) or die "LOOP_SET_STATUS64: $!\\n";',
].join(' ');
const NBD_SET_SIZE =
  'open(my $f, "+<", $ARGV[0]) or die "open: $!\\n"; ioctl($f, 0xab02, $ARGV[1] + 0) or die "NBD_SET_SIZE: $!\\n";';

/** Makes the attached device as large as the export is now; returns the new size. */
export async function growAttachment(a: Attachment, grant: Grant): Promise<number> {
  const size = await exportSizeBytes(grant);
  const current = Number(fs.readFileSync(`/sys/block/${path.basename(a.device)}/size`, 'utf8').trim()) * 512;
  if (size > current) {
    await run('perl', [
      '-e',
      a.method === 'kernel' ? NBD_SET_SIZE : LOOP_SET_SIZELIMIT,
      a.device,
      String(size),
    ]);
  }
  return size;
}
