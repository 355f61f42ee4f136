// NBD grants: ControllerPublishVolume adds exports a node may open with a fresh secret, and
// ControllerUnpublishVolume removes them (disconnecting the node). Each grant has two views of
// the same thin device: the volume at its real size (kernel nbd-client), and a "growable"
// view of a fixed large size (nbdfuse + loop, whose file size cannot change while attached; the
// loop device's size limit holds the real size and is raised on expansion).
import { randomBytes, createHash } from 'node:crypto';
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../block-device';
import type { NbdServer } from '../nbd';
import type { DeviceInfo, Pool } from '../thin/pool';
import type { PublishRecord } from './store';
import { MeteredDevice } from '../metrics/nbd-metrics';

/** publish_context keys. */
export const CTX_ENDPOINT = 'endpoint';
export const CTX_EXPORT = 'export';
export const CTX_GROWABLE_EXPORT = 'growableExport';
export const CTX_READONLY = 'readonly';

/** A device seen through a larger window: zeros and holes past its end, writes refused there. */
export class GrowableView implements BlockDevice {
  constructor(
    private readonly device: BlockDevice,
    readonly sizeBytes: number,
  ) {}

  get readOnly(): boolean {
    return this.device.readOnly;
  }

  private get end(): number {
    return this.device.sizeBytes;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    if (offset + length <= this.end) return this.device.read(offset, length);
    const out = Buffer.alloc(length);
    if (offset < this.end) (await this.device.read(offset, this.end - offset)).copy(out);
    return out;
  }

  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    if (offset + data.length > this.end)
      throw new RangeError(`write past the end of the volume (${this.end} bytes)`);
    return this.device.write(offset, data, options);
  }

  async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    if (offset < this.end) await this.device.trim(offset, Math.min(length, this.end - offset), options);
  }

  async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    if (offset < this.end)
      await this.device.writeZeroes(offset, Math.min(length, this.end - offset), options);
  }

  flush(): Promise<void> {
    return this.device.flush();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    if (offset >= this.end) return [{ offset, length, hole: true, zero: true }];
    return this.device.blockStatus(offset, Math.min(length, this.end - offset));
  }
}

export function newSecret(): string {
  return randomBytes(24).toString('base64url');
}

export class ExportGrants {
  constructor(
    private readonly nbd: NbdServer,
    private readonly pool: Pool,
    private readonly endpoint: string,
    private readonly growableBytes: number,
  ) {}

  /** Export name for one (device, node) pair; the node id is hashed to keep names short and safe. */
  exportName(deviceId: number, nodeId: string): string {
    const node = createHash('sha256').update(nodeId).digest('hex').slice(0, 12);
    return `vol${deviceId}-${node}`;
  }

  /** Makes sure the exports for this grant exist and returns the publish context. */
  grant(info: DeviceInfo, nodeId: string, record: PublishRecord): Record<string, string> {
    const name = this.exportName(info.id, nodeId);
    // One shared ThinDevice per volume: a resize updates its size for new connections.
    const device = this.pool.device(info.id);
    const access = { kind: 'secret' as const, secret: record.secret };
    if (!this.nbd.exports.get(name)) {
      this.nbd.addExport({
        name,
        device: new MeteredDevice(device, name),
        access,
        readOnly: record.readonly,
        fastZero: true,
        sparseReads: record.readonly,
      });
    }
    if (!this.nbd.exports.get(`${name}.grow`)) {
      this.nbd.addExport({
        name: `${name}.grow`,
        device: new MeteredDevice(
          new GrowableView(device, Math.max(this.growableBytes, device.sizeBytes)),
          `${name}.grow`,
        ),
        access,
        readOnly: record.readonly,
        fastZero: true,
        sparseReads: record.readonly,
      });
    }
    return {
      [CTX_ENDPOINT]: this.endpoint,
      [CTX_EXPORT]: `${name}/${record.secret}`,
      [CTX_GROWABLE_EXPORT]: `${name}.grow/${record.secret}`,
      [CTX_READONLY]: String(record.readonly),
    };
  }

  async revoke(deviceId: number, nodeId: string): Promise<void> {
    const name = this.exportName(deviceId, nodeId);
    await this.nbd.removeExport(name);
    await this.nbd.removeExport(`${name}.grow`);
  }
}
