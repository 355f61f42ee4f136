// Changes to the set of devices, kept in step between the metadata and the catalogue:
// intent → pool commit with the next transaction id → catalogue commit. A crash between any two
// steps is settled by `Catalogue.reconcile` on the next open.
import { logger } from '../log';
import { faultPoint } from '../util/fault-point';
import { ADOPTED_LABEL, Catalogue, CatalogueEntry } from './catalogue';
import { DeviceIdSet } from './device-ids';
import { DeviceExistsError, DeviceNotFoundError, PoolError, PoolReadOnlyError } from './errors';
import { IoGate } from './io-gate';
import { ThinMetadata } from './metadata';
import { Transactions } from './transactions';

const log = logger('pool');

/** A device id, or 'auto' to let the pool choose the lowest free one. */
export type DeviceIdChoice = number | 'auto';

export class DeviceSet {
  /** Ids in the metadata or the catalogue: none of them may be given to a new device. */
  private readonly usedIds: DeviceIdSet;
  private devices: number;

  constructor(
    private readonly gate: IoGate,
    private readonly txn: Transactions,
    private readonly catalogue: Catalogue,
    metadataIds: readonly number[],
    missingIds: readonly number[],
  ) {
    this.usedIds = new DeviceIdSet([...metadataIds, ...missingIds]);
    this.devices = metadataIds.length;
  }

  /** Devices in the metadata. */
  get count(): number {
    return this.devices;
  }

  /** Lowest id not in use (ids are 24-bit), in O(log n). */
  nextId(): number {
    const id = this.usedIds.lowestFree();
    if (id === undefined) throw new PoolError('all 2^24 device ids are in use', 'ENOSPC');
    return id;
  }

  /**
   * Creates (with `entry`, or what it returns inside the exclusive section) or deletes a device;
   * `apply` changes the metadata. Returns the id.
   */
  change(
    op: 'create' | 'delete',
    want: DeviceIdChoice,
    entry: CatalogueEntry | (() => CatalogueEntry) | undefined,
    apply: (md: ThinMetadata, id: number) => void,
  ): Promise<number> {
    return this.gate.exclusive(async () => {
      this.txn.checkWritable();
      const md = this.txn.md;
      const id = want === 'auto' ? this.nextId() : want;
      if (op === 'create' && (md.deviceExists(id) || this.catalogue.get(id))) throw new DeviceExistsError(id);
      await this.txn.commitNow();
      const from = md.sb.transactionId;
      const to = from + 1;
      this.catalogue.recordIntent(
        op === 'create'
          ? {
              op,
              id,
              entry: typeof entry === 'function' ? entry() : entry!,
              fromTransactionId: from,
              toTransactionId: to,
            }
          : { op, id, fromTransactionId: from, toTransactionId: to },
      );
      faultPoint(`${op}:after-intent`);
      try {
        await this.txn.metadataChange(() => {
          apply(md, id);
          md.setTransactionId(from, to);
        });
      } catch (e) {
        if (!(e instanceof PoolReadOnlyError)) this.catalogue.abandonIntent();
        throw e;
      }
      faultPoint(`${op}:after-pool-commit`);
      if (op === 'create') {
        this.usedIds.add(id);
        this.devices++;
      } else {
        this.usedIds.delete(id);
        this.devices--;
      }
      this.catalogue.completeIntent();
      faultPoint(`${op}:after-catalogue`);
      log.info(`${op === 'create' ? 'created' : 'deleted'} thin device`, { id, transactionId: to });
      return id;
    });
  }

  /**
   * Device `id` takes a shared copy of its snapshot `toId`'s mapping tree in one pool commit: it
   * then holds what `toId` holds, its size grows to the snapshot's if that is larger, `toId` and
   * every other snapshot stay, and the blocks only `id` held are freed. The device set and the
   * transaction id stay, so the catalogue needs no intent. Returns the device's size.
   */
  revert(
    id: number,
    toId: number,
    switched: () => void,
    change: Partial<CatalogueEntry> = {},
  ): Promise<number> {
    return this.gate.exclusive(async () => {
      this.txn.checkWritable();
      const md = this.txn.md;
      const entry = this.catalogue.get(id);
      const to = this.catalogue.get(toId);
      if (!entry || !md.deviceExists(id)) throw new DeviceNotFoundError(id);
      if (!to || !md.deviceExists(toId)) throw new DeviceNotFoundError(toId);
      if (!this.catalogue.descendsFrom(toId, id))
        throw new PoolError(
          `device ${toId} is not a snapshot of device ${id} (nor of one of its snapshots)`,
          'EINVAL',
        );
      const sizeBytes = Math.max(entry.sizeBytes, to.sizeBytes);
      // Growing first is harmless if the revert then fails: the new tail reads as zeros (and
      // `change` may only make the device look more changed than it is).
      const update = { ...change, ...(sizeBytes > entry.sizeBytes ? { sizeBytes } : {}) };
      if (Object.keys(update).length) this.catalogue.update(id, update);
      await this.txn.commitNow();
      await this.txn.metadataChange(() => {
        md.revertDevice(id, toId);
        switched();
      });
      faultPoint('revert:after-pool-commit');
      log.info('reverted thin device', { id, to: toId });
      return sizeBytes;
    });
  }

  /** Drops a catalogue entry whose device the metadata does not have (reported at open). */
  async forgetMissing(id: number): Promise<void> {
    await this.gate.exclusive(() => {
      this.txn.checkWritable();
      this.catalogue.forget(id);
      this.usedIds.delete(id);
    });
    log.warn('dropped the catalogue entry of a device the metadata does not have', { id });
  }
}

export function checkDeviceSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512) {
    throw new PoolError(`device size ${sizeBytes} must be a positive multiple of 512 bytes`, 'EINVAL');
  }
}

// dm-thin stores no device size: an adopted device gets one that covers its last mapped block
// (an LVM thin volume may be larger; `pool import-xml --size`, `resizeDevice` or a CSI expand
// grows it).
export function adoptedEntry(md: ThinMetadata, id: number): CatalogueEntry {
  const root = md.deviceRoot(id);
  const last = root === undefined ? undefined : md.mappings.lastKey(root);
  return {
    sizeBytes: ((last ?? 0) + 1) * md.dataBlockBytes,
    createdAt: new Date().toISOString(),
    labels: { [ADOPTED_LABEL]: 'true' },
  };
}
