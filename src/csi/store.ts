// CSI volumes and snapshots as thin devices: ids, names and parameters live in the devices'
// catalogue labels, so the pool's own crash-safe catalogue is the driver's only state.
import { randomUUID } from 'node:crypto';
import type { PageOptions } from '../thin/catalogue';
import type { DeviceInfo, Pool } from '../thin/pool';
import { SerialQueue } from '../util/serial-queue';
import { invalidArgument } from './errors';

export const LABEL_KIND = 'csi.kind';
export const LABEL_NAME = 'csi.name';
export const LABEL_UID = 'csi.uid';
export const LABEL_PARAMETERS = 'csi.parameters';
/** Volumes: `snapshot:<id>` / `volume:<id>` they were made from. Snapshots: the source volume id. */
export const LABEL_SOURCE = 'csi.source';
/** `csi.publish/<node id>` → JSON PublishRecord: the node's NBD grant. */
export const LABEL_PUBLISH_PREFIX = 'csi.publish/';

export type Kind = 'volume' | 'snapshot';

export interface PublishRecord {
  secret: string;
  readonly: boolean;
}

export interface ParsedId {
  pool: string;
  deviceId: number;
  uid: string;
}

/** Ids look like `<pool>:<device id>:<generation uuid>`; the uuid makes them never repeat. */
export function parseId(id: string): ParsedId | undefined {
  const m = /^([A-Za-z0-9._-]+):(\d{1,8}):([0-9a-f-]{36})$/.exec(id);
  if (!m) return undefined;
  return { pool: m[1], deviceId: Number(m[2]), uid: m[3] };
}

export class Store {
  /** Device id choice and creation must not interleave. */
  readonly deviceSet = new SerialQueue();

  constructor(
    readonly pool: Pool,
    readonly poolName: string,
  ) {}

  idOf(info: DeviceInfo): string {
    return `${this.poolName}:${info.id}:${info.labels[LABEL_UID]}`;
  }

  newLabels(kind: Kind, name: string, extra: Record<string, string>): Record<string, string> {
    return { [LABEL_KIND]: kind, [LABEL_NAME]: name, [LABEL_UID]: randomUUID(), ...extra };
  }

  /** The device behind a volume or snapshot id, or undefined if it is gone (or never was). */
  find(kind: Kind, id: string): DeviceInfo | undefined {
    const parsed = parseId(id);
    if (!parsed || parsed.pool !== this.poolName) return undefined;
    const entry = this.pool.catalogue.get(parsed.deviceId);
    if (!entry || entry.labels[LABEL_KIND] !== kind || entry.labels[LABEL_UID] !== parsed.uid)
      return undefined;
    return this.pool.deviceInfo(parsed.deviceId);
  }

  /** Like `find`, but a malformed id is the caller's mistake. */
  findChecked(kind: Kind, id: string, field: string): DeviceInfo | undefined {
    if (!id) throw invalidArgument(`${field} is required`);
    return this.find(kind, id);
  }

  /** By the name label's index: O(log n) however many devices the pool holds. */
  byName(kind: Kind, name: string): DeviceInfo | undefined {
    return this.pool.listDevices({ label: [LABEL_NAME, name] }).find((d) => d.labels[LABEL_KIND] === kind);
  }

  /** One page of volumes or snapshots in id order (`source`: snapshots of that volume only). */
  list(kind: Kind, page: PageOptions & { source?: string } = {}): DeviceInfo[] {
    if (page.source !== undefined && !parseId(page.source)) return [];
    const label: [string, string] = page.source ? [LABEL_SOURCE, page.source] : [LABEL_KIND, kind];
    return this.pool.listDevices({ ...page, label }).filter((d) => d.labels[LABEL_KIND] === kind);
  }

  publications(info: DeviceInfo): Map<string, PublishRecord> {
    const out = new Map<string, PublishRecord>();
    for (const [k, v] of Object.entries(info.labels)) {
      if (k.startsWith(LABEL_PUBLISH_PREFIX))
        out.set(k.slice(LABEL_PUBLISH_PREFIX.length), JSON.parse(v) as PublishRecord);
    }
    return out;
  }

  async setPublication(
    info: DeviceInfo,
    nodeId: string,
    record: PublishRecord | undefined,
  ): Promise<DeviceInfo> {
    const labels = { ...this.pool.catalogue.get(info.id)!.labels };
    if (record) labels[LABEL_PUBLISH_PREFIX + nodeId] = JSON.stringify(record);
    else delete labels[LABEL_PUBLISH_PREFIX + nodeId];
    return this.pool.setLabels(info.id, labels);
  }

  /** Σ virtual sizes of volumes: what overprovisioning is measured against. */
  provisionedBytes(): number {
    const catalogue = this.pool.catalogue;
    let sum = 0;
    for (const id of catalogue.withLabel(LABEL_KIND, 'volume')) sum += catalogue.get(id)?.sizeBytes ?? 0;
    return sum;
  }

  poolBytes(): number {
    const s = this.pool.status();
    return s.dataBlocksTotal * s.dataBlockBytes;
  }

  freeBytes(): number {
    const s = this.pool.status();
    return (s.dataBlocksTotal - s.dataBlocksUsed) * s.dataBlockBytes;
  }
}
