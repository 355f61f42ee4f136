// Serves one file over NBD with our server, for benchmarks and manual testing:
//   node dist/nbd-bench/bench/nbd/serve.js FILE [--port N | --socket PATH] [--name NAME] [--read-only]
//                                           [--sync-io-max BYTES]
//   node dist/nbd-bench/bench/nbd/serve.js - --memory [--size-mib N] ...   (RAM device, for profiling)
// Prints "READY <address>" on stdout once listening; exits on SIGTERM/SIGINT.
import type { BlockDevice, Extent } from '../../src/block-device';
import { FileBlockDevice } from '../../src/file-block-device';
import { NbdServer } from '../../src/nbd';

/** RAM-backed device: isolates the protocol cost from file I/O when profiling. */
class MemoryBlockDevice implements BlockDevice {
  readonly readOnly = false;
  private readonly data: Buffer;
  constructor(readonly sizeBytes: number) {
    this.data = Buffer.alloc(sizeBytes);
  }
  async read(offset: number, length: number): Promise<Buffer> {
    return Buffer.from(this.data.subarray(offset, offset + length));
  }
  async write(offset: number, data: Buffer): Promise<void> {
    data.copy(this.data, offset);
  }
  async trim(offset: number, length: number): Promise<void> {
    this.data.fill(0, offset, offset + length);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.data.fill(0, offset, offset + length);
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, hole: false, zero: false }];
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const file = args[0];
  if (!file) throw new Error('usage: serve.js FILE [--port N | --socket PATH] [--name NAME] [--read-only]');
  const option = (flag: string): string | undefined => {
    const at = args.indexOf(flag);
    return at >= 0 ? args[at + 1] : undefined;
  };
  const device = args.includes('--memory')
    ? new MemoryBlockDevice(Number(option('--size-mib') ?? 1024) * 1024 * 1024)
    : await FileBlockDevice.open(file, {
        readOnly: args.includes('--read-only'),
        syncIoMaxBytes: Number(option('--sync-io-max') ?? 0),
      });
  const name = option('--name') ?? 'bench';
  const server = new NbdServer({ defaultExport: name });
  server.addExport({ name, description: `file ${file}`, device, access: { kind: 'open' } });
  const socketPath = option('--socket');
  const bound = await server.listen(
    socketPath ? { path: socketPath } : { host: '127.0.0.1', port: Number(option('--port') ?? 0) },
  );
  process.stdout.write(`READY ${JSON.stringify(bound)}\n`);
  const stop = async (): Promise<void> => {
    await server.close(1000);
    await device.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
}

main().catch((error: unknown) => {
  process.stderr.write(`serve: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
