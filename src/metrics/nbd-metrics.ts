import client from 'prom-client';
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../block-device';
import type { NbdServer } from '../nbd';
import { nbdBytes, nbdLatency, nbdOperations, registry } from './registry';

const servers = new Set<NbdServer>();

new client.Gauge({
  name: 'thinpool_nbd_connections',
  help: 'Open NBD client connections',
  registers: [registry],
  collect() {
    let n = 0;
    for (const s of servers) n += s.connectionCount();
    this.set(n);
  },
});

export function registerNbdServerMetrics(server: NbdServer): void {
  servers.add(server);
}

/** A device that counts what its export serves (bytes, operations, latency). */
export class MeteredDevice implements BlockDevice {
  constructor(
    private readonly device: BlockDevice,
    private readonly exportName: string,
  ) {}

  get sizeBytes(): number {
    return this.device.sizeBytes;
  }
  get readOnly(): boolean {
    return this.device.readOnly;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.measure('read', length, () => this.device.read(offset, length));
  }
  // The fast paths stay fast through the wrapper when the device has them.
  readInto(offset: number, target: Buffer): Promise<void> {
    const device = this.device;
    if (!device.readInto)
      return this.measure(
        'read',
        target.length,
        async () => void (await device.read(offset, target.length)).copy(target),
      );
    return this.measure('read', target.length, () => device.readInto!(offset, target));
  }
  writeVectored(offset: number, parts: Buffer[], options?: WriteOptions): Promise<void> {
    const device = this.device;
    const bytes = parts.reduce((n, p) => n + p.length, 0);
    if (!device.writeVectored)
      return this.measure('write', bytes, () => device.write(offset, Buffer.concat(parts), options));
    return this.measure('write', bytes, () => device.writeVectored!(offset, parts, options));
  }
  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.measure('write', data.length, () => this.device.write(offset, data, options));
  }
  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.measure('trim', length, () => this.device.trim(offset, length, options));
  }
  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.measure('zero', length, () => this.device.writeZeroes(offset, length, options));
  }
  flush(): Promise<void> {
    return this.measure('flush', 0, () => this.device.flush());
  }
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.measure('block_status', 0, () => this.device.blockStatus(offset, length));
  }

  // Label lookups hash their label set on every call; this is the NBD hot path, so each
  // operation's metric children are bound once.
  private readonly bound = new Map<string, ReturnType<typeof this.bind>>();

  private bind(op: string) {
    return {
      latency: nbdLatency.labels({ op }),
      bytes: nbdBytes.labels({ export: this.exportName, op }),
      ok: nbdOperations.labels({ export: this.exportName, op, result: 'ok' }),
      error: nbdOperations.labels({ export: this.exportName, op, result: 'error' }),
    };
  }

  private async measure<T>(op: string, bytes: number, fn: () => Promise<T>): Promise<T> {
    let m = this.bound.get(op);
    if (!m) this.bound.set(op, (m = this.bind(op)));
    const started = process.hrtime.bigint();
    try {
      const result = await fn();
      if (bytes) m.bytes.inc(bytes);
      m.ok.inc();
      return result;
    } catch (e) {
      m.error.inc();
      throw e;
    } finally {
      m.latency.observe(Number(process.hrtime.bigint() - started) / 1e9);
    }
  }
}
