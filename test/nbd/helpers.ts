// Shared fixtures for NBD tests: a server on a temp file, a tiny hole-aware device, and a
// runner for the real client tools.
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { BlockDevice, Extent } from '../../src/block-device';
import { FileBlockDevice } from '../../src/file-block-device';
import { type ExportDefinition, NbdServer, type NbdServerOptions } from '../../src/nbd';

const execFileAsync = promisify(execFile);

/** Runs a tool with an argument array; rejects with its stderr on failure. */
export async function tool(
  command: string,
  args: string[],
  options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<{ stdout: string; stderr: string }> {
  try {
    return await execFileAsync(command, args, {
      timeout: options.timeoutMs ?? 60_000,
      maxBuffer: 256 * 1024 * 1024,
      // Debian's python3 has the nbd module; a different python first on PATH would not.
      env: {
        ...process.env,
        PATH: `/usr/bin:/usr/sbin:/sbin:/bin:${process.env.PATH ?? ''}`,
        ...options.env,
      },
    });
  } catch (error) {
    const e = error as Error & { stderr?: string; stdout?: string };
    throw new Error(`${command} ${args.join(' ')} failed: ${e.message}\n${e.stderr ?? ''}${e.stdout ?? ''}`);
  }
}

export interface TestServer {
  server: NbdServer;
  dir: string;
  port: number;
  socketPath: string;
  device: FileBlockDevice;
  /** nbd:// URI for an export over TCP. */
  uri(name: string): string;
  /** nbd+unix:// URI for an export over the unix socket. */
  unixUri(name: string): string;
  close(): Promise<void>;
}

/**
 * A server on 127.0.0.1 and a unix socket, with one writable export `disk` over a temp file
 * (plus whatever `extraExports` adds).
 */
export async function startTestServer(
  options: {
    sizeBytes?: number;
    serverOptions?: NbdServerOptions;
    exportOverrides?: Partial<ExportDefinition>;
    extraExports?: (device: FileBlockDevice) => ExportDefinition[];
  } = {},
): Promise<TestServer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'nbd-test-'));
  const device = await FileBlockDevice.open(path.join(dir, 'disk.img'), {
    sizeBytes: options.sizeBytes ?? 64 * 1024 * 1024,
  });
  const server = new NbdServer(options.serverOptions);
  server.addExport({
    name: 'disk',
    description: 'test disk',
    device,
    access: { kind: 'open' },
    ...options.exportOverrides,
  });
  for (const definition of options.extraExports?.(device) ?? []) server.addExport(definition);
  const tcp = await server.listen({ host: '127.0.0.1', port: 0 });
  const socketPath = path.join(dir, 'nbd.sock');
  await server.listen({ path: socketPath });
  const port = 'port' in tcp ? tcp.port : 0;
  return {
    server,
    dir,
    port,
    socketPath,
    device,
    uri: (name) => `nbd://127.0.0.1:${port}/${name}`,
    unixUri: (name) => `nbd+unix:///${name}?socket=${socketPath}`,
    close: async () => {
      await server.close(1000);
      await device.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * RAM device that tracks allocation per 64 KiB block: trim and zeroing (without noHole) make
 * holes, blockStatus reports them. Enough to test holes without the thin engine.
 */
export class HoleyDevice implements BlockDevice {
  static readonly BLOCK = 64 * 1024;
  readonly readOnly = false;
  readonly data: Buffer;
  readonly allocated: boolean[];

  constructor(readonly sizeBytes: number) {
    this.data = Buffer.alloc(sizeBytes);
    this.allocated = new Array<boolean>(Math.ceil(sizeBytes / HoleyDevice.BLOCK)).fill(false);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    return Buffer.from(this.data.subarray(offset, offset + length));
  }

  async write(offset: number, data: Buffer): Promise<void> {
    data.copy(this.data, offset);
    this.mark(offset, data.length, true);
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length, {});
  }

  async writeZeroes(offset: number, length: number, options: { noHole?: boolean } = {}): Promise<void> {
    this.data.fill(0, offset, offset + length);
    if (!options.noHole) this.unmapWhole(offset, length);
  }

  async flush(): Promise<void> {}

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const extents: Extent[] = [];
    const end = offset + length;
    for (let at = offset; at < end;) {
      const block = Math.floor(at / HoleyDevice.BLOCK);
      const next = Math.min((block + 1) * HoleyDevice.BLOCK, end);
      const hole = !this.allocated[block];
      const last = extents[extents.length - 1];
      if (last && last.hole === hole) last.length += next - at;
      else extents.push({ offset: at, length: next - at, hole, zero: hole });
      at = next;
    }
    return extents;
  }

  private mark(offset: number, length: number, value: boolean): void {
    const first = Math.floor(offset / HoleyDevice.BLOCK);
    const last = Math.floor((offset + length - 1) / HoleyDevice.BLOCK);
    for (let b = first; b <= last; b++) this.allocated[b] = value;
  }

  private unmapWhole(offset: number, length: number): void {
    const first = Math.ceil(offset / HoleyDevice.BLOCK);
    const end = Math.floor((offset + length) / HoleyDevice.BLOCK);
    for (let b = first; b < end; b++) this.allocated[b] = false;
  }
}

/** Parses `nbdinfo --map --json` output into [offset, length, type] rows. */
export function parseMap(json: string): Array<{ offset: number; length: number; type: number }> {
  return (JSON.parse(json) as Array<{ offset: number; length: number; type: number }>).map((e) => ({
    offset: e.offset,
    length: e.length,
    type: e.type,
  }));
}
