import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import { logger } from '../log';
import { SerialQueue } from '../util/serial-queue';
import { formatSize } from '../util/size';
import { Catalogue, CatalogueEntry, CatalogueReport, PageOptions } from './catalogue';
import { DataFile } from './data-file';
import { DataSpace, NoSpacePolicy } from './data-space';
import { DeviceIdChoice, DeviceSet, adoptedEntry, checkDeviceSize } from './device-set';
import { DeltaRange, MappedRange, allocatedRanges, deltaRanges, writtenRanges } from './delta';
import { EraStatus, EraTracker } from './era/era-tracker';
import { DeviceNotFoundError, PoolError } from './errors';
import { blockRunsToExtents } from './extents';
import { IoGate } from './io-gate';
import { DeviceDetails } from './mapping';
import { MappingView } from './mapping-view';
import { ThinMetadata } from './metadata';
import { PoolConfigError, PoolCreateOptions, formatPool, poolPaths } from './pool-files';
import { NEEDS_CHECK_FLAG, Superblock } from './superblock';
import { DeviceHost, ThinDevice } from './thin-device';
import { Transactions } from './transactions';

const log = logger('pool');

export type { PoolCreateOptions };

export type { NoSpacePolicy };

export type { DeviceIdChoice };

export interface PoolOpenOptions {
  readOnly?: boolean;
  cacheBlocks?: number;
  /** Skip reading every tree node at open (faster for huge pools; damage then shows up on use). */
  skipVerify?: boolean;
  /** Commit at least this often while there are changes (0 = only on flush). Default 1000. */
  commitIntervalMs?: number;
  /** What a write does when no data block is free: fail at once, or wait for the pool to grow. */
  noSpacePolicy?: NoSpacePolicy;
  noSpaceTimeoutMs?: number;
  /** Emit 'low-water' once when free data blocks drop below this. */
  lowWaterBlocks?: number;
  /** Leave the rest of a newly provisioned block unwritten (faster; stale data may show). */
  skipBlockZeroing?: boolean;
  /**
   * Data reads and writes up to this size use synchronous I/O: a page-cache hit then costs a
   * couple of microseconds instead of a round trip through libuv's thread pool, but a miss
   * stalls the event loop. 0 (the default) keeps all data I/O asynchronous.
   */
  syncIoMaxBytes?: number;
}

export interface PoolStatus {
  path: string;
  mode: 'read-write' | 'read-only';
  transactionId: number;
  time: number;
  dataBlockBytes: number;
  dataBlocksUsed: number;
  dataBlocksTotal: number;
  metadataBlocksUsed: number;
  metadataBlocksTotal: number;
  heldMetadataRoot: number | null;
  devices: number;
  needsCheck: boolean;
  /** Commits that wrote a new superblock since the pool was opened. */
  commits: number;
  /** Syncs of the data file since the pool was opened. */
  dataSyncs: number;
  /** Catalogue entries, and what opening found (see `Catalogue.reconcile`). */
  catalogue: { entries: number; snapshots: number } & CatalogueReport;
  /** Era tracking, when the pool has it. */
  era?: EraStatus;
}

export interface DeviceInfo extends CatalogueEntry {
  id: number;
  details: DeviceDetails;
}

/**
 * A thin pool: dm-thin metadata, a data file and the catalogue, with devices on top. Changes to
 * the device set follow intent → pool commit → catalogue commit, tied by the transaction id.
 */
export class Pool extends EventEmitter implements DeviceHost {
  readonly gate = new IoGate();
  readonly blockBytes: number;
  readonly skipBlockZeroing: boolean;
  readonly space: DataSpace;
  private readonly txn: Transactions;
  private readonly views = new Map<number, MappingView>();
  private readonly open = new Map<number, ThinDevice>();
  private readonly openReadOnly = new Map<number, ThinDevice>();
  private readonly metadataSnapTurns = new SerialQueue();
  private readonly deviceSet: DeviceSet;
  private closed = false;
  /** Why the pool's era metadata did not open, when it did not. */
  private eraProblem: string | undefined;

  private constructor(
    readonly dir: string,
    md: ThinMetadata,
    readonly data: DataFile,
    readonly catalogue: Catalogue,
    private readonly found: CatalogueReport,
    metadataIds: readonly number[],
    options: PoolOpenOptions,
    /** Era tracking of the data blocks, when the pool has it. */
    readonly era: EraTracker | undefined,
  ) {
    super();
    if (era) data.onWrite = (first, count) => era.mark(first, count);
    this.blockBytes = md.dataBlockBytes;
    this.skipBlockZeroing = options.skipBlockZeroing ?? false;
    this.txn = new Transactions(poolPaths(dir), md, data, this.gate, {
      readOnly: options.readOnly,
      commitIntervalMs: options.commitIntervalMs ?? 1000,
      // Settles the last device-set change on disk (opening would roll it forward anyway).
      afterPeriodicCommit: () => {
        this.catalogue.flush();
        this.era?.commit();
      },
      metadataReplaced: () => {
        for (const view of this.views.values()) view.refresh();
      },
    });
    this.deviceSet = new DeviceSet(this.gate, this.txn, catalogue, metadataIds, found.missing);
    this.space = new DataSpace(() => this.md, options, {
      lowWater: (free) => this.emit('low-water', free),
      outOfSpace: () => this.emit('out-of-space'),
      commit: () => this.commit(),
      metadataFull: (cause) => this.txn.failMetadata(cause),
    });
  }

  private get md(): ThinMetadata {
    return this.txn.md;
  }

  /** The live metadata, for engine benchmarks that build large fixtures fast; not for I/O. */
  get metadata(): ThinMetadata {
    return this.txn.md;
  }

  static async create(
    dir: string,
    options: PoolCreateOptions,
    openOptions: PoolOpenOptions = {},
  ): Promise<Pool> {
    formatPool(dir, options);
    return Pool.open(dir, openOptions);
  }

  static async open(dir: string, options: PoolOpenOptions = {}): Promise<Pool> {
    const paths = poolPaths(dir);
    if (!fs.existsSync(paths.metadata))
      throw new PoolConfigError(`${dir} is not a pool: ${paths.metadata} is missing`);
    const md = ThinMetadata.open(paths.metadata, options);
    let data: DataFile | undefined;
    let catalogue: Catalogue | undefined;
    let era: EraTracker | undefined;
    try {
      if (!options.skipVerify) md.verifyTrees();
      data = await DataFile.open(paths.data, md.dataBlockBytes, options);
      const dataBytes = data.sizeBytes;
      const needed = md.sb.dataSpaceMap.nrBlocks * md.dataBlockBytes;
      if (dataBytes < needed) {
        throw new PoolConfigError(
          `${paths.data} holds ${formatSize(dataBytes)} but the metadata maps ${formatSize(needed)}`,
        );
      }
      catalogue = Catalogue.open(paths.catalogue, paths.legacyCatalogue, { readOnly: options.readOnly });
      const ids = md.deviceIds();
      const found = catalogue.reconcile(md.sb.transactionId, ids, (id) => adoptedEntry(md, id));
      let eraProblem: string | undefined;
      if (EraTracker.exists(paths.era)) {
        try {
          era = EraTracker.open(paths.era, md.sb.dataSpaceMap.nrBlocks, {
            readOnly: options.readOnly,
            lastRecordedEra: () => lastRecordedEra(catalogue!),
          });
        } catch (e) {
          // The pool's data matters more than era answers: open without them, and leave no
          // journal, so that an era that opens again later counts every block as written.
          eraProblem = (e as Error).message;
          log.error('era metadata could not be opened; the pool runs without era tracking', {
            error: eraProblem,
          });
          if (!options.readOnly) fs.rmSync(paths.era.journal, { force: true });
        }
      }
      const pool = new Pool(dir, md, data, catalogue, found, ids, options, era);
      pool.eraProblem = eraProblem;
      await pool.txn.start();
      return pool;
    } catch (e) {
      era?.close();
      catalogue?.close();
      await data?.close();
      md.close();
      throw e;
    }
  }

  // ---- devices ----

  /** Lowest id not in use (ids are 24-bit), in O(log n). */
  nextDeviceId(): number {
    return this.deviceSet.nextId();
  }

  /** A new empty device; with id 'auto' the pool picks the lowest free id, race-free. */
  async createThin(
    id: DeviceIdChoice,
    sizeBytes: number,
    labels: Record<string, string> = {},
  ): Promise<DeviceInfo> {
    checkDeviceSize(sizeBytes);
    const entry = { sizeBytes, createdAt: new Date().toISOString(), labels };
    const chosen = await this.deviceSet.change('create', id, entry, (md, newId) => md.createThin(newId));
    return this.deviceInfo(chosen);
  }

  /** An O(1) snapshot of `originId`; its size defaults to the origin's and may only be larger. */
  async createSnap(
    id: DeviceIdChoice,
    originId: number,
    options: { sizeBytes?: number; labels?: Record<string, string> } = {},
  ): Promise<DeviceInfo> {
    const origin = this.catalogue.get(originId);
    if (!origin || !this.md.deviceExists(originId)) throw new DeviceNotFoundError(originId);
    const sizeBytes = options.sizeBytes ?? origin.sizeBytes;
    checkDeviceSize(sizeBytes);
    if (sizeBytes < origin.sizeBytes)
      throw new PoolError(
        `a snapshot cannot be smaller than its origin (${origin.sizeBytes} bytes)`,
        'EINVAL',
      );
    const entry = {
      sizeBytes,
      origin: originId,
      ...(origin.revertedEra !== undefined ? { revertedEra: origin.revertedEra } : {}),
      createdAt: new Date().toISOString(),
      labels: options.labels ?? {},
    };
    // The origin's writers must see its blocks as shared before any other I/O may run.
    // With era tracking, the snapshot starts a new era: every later write is in it or a later one.
    const withEra = () => (this.era && !this.era.failed ? { ...entry, era: this.era.checkpoint() } : entry);
    const chosen = await this.deviceSet.change('create', id, withEra, (md, newId) => {
      md.createSnap(newId, originId);
      this.views.get(originId)?.refresh();
    });
    return this.deviceInfo(chosen);
  }

  async deleteDevice(id: number): Promise<void> {
    if (!this.md.deviceExists(id)) {
      if (!this.catalogue.get(id)) throw new DeviceNotFoundError(id);
      return this.deviceSet.forgetMissing(id);
    }
    await this.deviceSet.change('delete', id, undefined, (md) => md.deleteDevice(id));
    this.open.delete(id);
    this.openReadOnly.delete(id);
    this.views.delete(id);
  }

  /**
   * Reverts device `id` to its snapshot `toId` in one pool commit, O(1) in metadata (see
   * `DeviceSet.revert`). I/O to `id` waits for the instant of the switch; a reader must drop what
   * it cached of `id`.
   */
  async revertDevice(id: number, toId: number): Promise<DeviceInfo> {
    const sizeBytes = await this.deviceSet.revert(
      id,
      toId,
      () => {
        this.views.get(id)?.refresh();
        this.views.get(toId)?.refresh();
      },
      this.era ? { revertedEra: this.era.currentEra } : {},
    );
    for (const views of [this.open, this.openReadOnly]) views.get(id)?.grew(sizeBytes);
    return this.deviceInfo(id);
  }

  /** Grows a device's virtual size (a catalogue change: dm-thin stores no size). */
  async resizeDevice(id: number, sizeBytes: number): Promise<DeviceInfo> {
    checkDeviceSize(sizeBytes);
    const entry = this.catalogue.get(id);
    if (!entry) throw new DeviceNotFoundError(id);
    if (sizeBytes < entry.sizeBytes)
      throw new PoolError(
        `shrinking device ${id} from ${entry.sizeBytes} to ${sizeBytes} bytes is not supported`,
        'EINVAL',
      );
    await this.gate.exclusive(() => {
      this.checkWritable();
      this.catalogue.update(id, { sizeBytes });
    });
    for (const views of [this.open, this.openReadOnly]) views.get(id)?.grew(sizeBytes);
    return this.deviceInfo(id);
  }

  async setLabels(id: number, labels: Record<string, string>): Promise<DeviceInfo> {
    if (!this.catalogue.get(id)) throw new DeviceNotFoundError(id);
    await this.gate.exclusive(() => {
      this.checkWritable();
      this.catalogue.update(id, { labels });
    });
    return this.deviceInfo(id);
  }

  /** The device's one writable view, or its one read-only view; both follow resizes. */
  device(id: number, options: { readOnly?: boolean } = {}): ThinDevice {
    const entry = this.catalogue.get(id);
    if (!entry || !this.md.deviceExists(id)) throw new DeviceNotFoundError(id);
    const views = options.readOnly ? this.openReadOnly : this.open;
    let dev = views.get(id);
    if (!dev) {
      dev = new ThinDevice(this, id, entry.sizeBytes, options.readOnly);
      views.set(id, dev);
    }
    return dev;
  }

  /** One view per device, shared by its writable and read-only ThinDevice. */
  mappingView(id: number): MappingView {
    let view = this.views.get(id);
    if (!view) this.views.set(id, (view = new MappingView(() => this.md, id)));
    return view;
  }

  deviceInfo(id: number): DeviceInfo {
    const entry = this.catalogue.get(id);
    const details = this.md.deviceDetails(id);
    if (!entry || !details) throw new DeviceNotFoundError(id);
    return { id, ...entry, details };
  }

  /**
   * Devices in id order, optionally only those with one label value, a page at a time: the cost
   * follows the page, not the pool. Catalogue entries without a device are left out.
   */
  listDevices(options: PageOptions & { label?: [key: string, value: string] } = {}): DeviceInfo[] {
    const ids = options.label
      ? this.catalogue.withLabel(options.label[0], options.label[1], options)
      : this.catalogue.ids(options);
    const out: DeviceInfo[] = [];
    for (const id of ids) {
      const entry = this.catalogue.get(id);
      const details = this.md.deviceDetails(id);
      if (entry && details) out.push({ id, ...entry, details });
    }
    return out;
  }

  // ---- metadata snapshot, delta ----

  reserveMetadataSnap(): Promise<number> {
    return this.gate.exclusive(() => this.txn.metadataChange(() => this.md.reserveMetadataSnap()));
  }

  releaseMetadataSnap(): Promise<void> {
    return this.gate.exclusive(() => this.txn.metadataChange(() => this.md.releaseMetadataSnap()));
  }

  /**
   * Reserves the metadata snapshot, runs `fn` (which may read with `useMetadataSnap`), then
   * releases it. Callers in one process queue up here, since only one snapshot may be held.
   */
  withMetadataSnap<T>(fn: () => Promise<T>): Promise<T> {
    return this.metadataSnapTurns.run(async () => {
      await this.reserveMetadataSnap();
      try {
        return await fn();
      } finally {
        await this.releaseMetadataSnap();
      }
    });
  }

  /**
   * Where two devices' mappings differ. With `useMetadataSnap`, reads the held metadata
   * snapshot (a frozen view; the pool keeps writing meanwhile).
   */
  async delta(a: number, b: number, options: { useMetadataSnap?: boolean } = {}): Promise<DeltaRange[]> {
    return this.gate.run(async () => deltaRanges(this.md, this.viewFor(options), a, b));
  }

  /**
   * The bytes of [offset, offset+length) of `target` as runs that differ (`changed`) or not from
   * `base`, at block granularity: what a changed-block-tracking reader asks for.
   */
  async changedExtents(
    base: number,
    target: number,
    offset: number,
    length: number,
    options: { useMetadataSnap?: boolean } = {},
  ): Promise<{ offset: number; length: number; changed: boolean }[]> {
    const bs = this.blockBytes;
    const end = offset + length;
    const first = Math.floor(offset / bs);
    const ranges = await this.gate.run(async () =>
      deltaRanges(this.md, this.viewFor(options), base, target, first, Math.ceil(end / bs)),
    );
    return blockRunsToExtents(ranges, bs, offset, length).map((e) => ({
      offset: e.offset,
      length: e.length,
      changed: e.marked,
    }));
  }

  async allocated(id: number, options: { useMetadataSnap?: boolean } = {}): Promise<MappedRange[]> {
    return this.gate.run(async () => allocatedRanges(this.md, this.viewFor(options), id));
  }

  /** Mapped runs of `id` whose data was written in era `since` or later (needs era tracking). */
  async writtenSinceEra(
    id: number,
    since: number,
    options: { useMetadataSnap?: boolean } = {},
  ): Promise<MappedRange[]> {
    const era = this.era;
    if (!era)
      throw new PoolError(
        this.eraProblem
          ? `the era metadata of ${this.dir} did not open (${this.eraProblem})`
          : `${this.dir} has no era tracking (pool era enable turns it on)`,
        'EINVAL',
      );
    // A revert (of the device or, for a snapshot, of its origin) remapped every block at once.
    const reverted = this.catalogue.get(id)?.revertedEra;
    if (reverted !== undefined && reverted >= since) return this.allocated(id, options);
    return this.gate.run(async () =>
      writtenRanges(this.md, this.viewFor(options), id, era.writtenSince(since)),
    );
  }

  private viewFor(options: { useMetadataSnap?: boolean }): Superblock {
    if (!options.useMetadataSnap) return this.md.sb;
    const held = this.md.heldSuperblock();
    if (!held) throw new PoolError('no metadata snapshot is held (reserve one first)', 'ENOENT');
    return held;
  }

  // ---- space ----

  /** Grows the data file (or takes a grown block device) and the data space map with it. */
  async resize(dataSizeBytes?: number): Promise<PoolStatus> {
    this.checkWritable();
    if (dataSizeBytes !== undefined) await this.data.grow(dataSizeBytes);
    const nrBlocks = this.data.nrBlocks;
    await this.gate.exclusive(async () => {
      await this.txn.metadataChange(() => this.space.grow(nrBlocks));
      this.era?.grow(nrBlocks);
    });
    log.info('pool resized', { dataBlocks: nrBlocks });
    this.emit('resized', nrBlocks);
    return this.status();
  }

  checkWritable(): void {
    this.txn.checkWritable();
  }

  // ---- transactions ----

  /** Makes everything acknowledged so far durable: data first, then metadata, superblock last. */
  flush(): Promise<void> {
    return this.commit();
  }

  commit(): Promise<void> {
    return this.txn.commit();
  }

  status(): PoolStatus {
    const sb = this.md.sb;
    return {
      path: this.dir,
      mode: this.txn.readOnlyBecause ? 'read-only' : 'read-write',
      transactionId: sb.transactionId,
      time: sb.time,
      dataBlockBytes: this.blockBytes,
      dataBlocksUsed: this.md.dataSm.counts.nrAllocated,
      dataBlocksTotal: this.md.dataSm.counts.nrBlocks,
      metadataBlocksUsed: this.md.metadataSm.counts.nrAllocated,
      metadataBlocksTotal: this.md.metadataSm.counts.nrBlocks,
      heldMetadataRoot: sb.heldRoot || null,
      devices: this.deviceSet.count,
      needsCheck: (sb.flags & NEEDS_CHECK_FLAG) !== 0,
      commits: this.txn.commitCount,
      dataSyncs: this.data.syncCount,
      catalogue: { ...this.catalogue.counts, ...this.found },
      ...(this.era ? { era: this.era.status() } : {}),
    };
  }

  get readOnlyBecause(): string | undefined {
    return this.txn.readOnlyBecause;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.txn.close();
    this.era?.close();
    this.catalogue.close();
    await this.data.close();
  }
}

/** The latest era a snapshot's entry records (a scan: only after a machine crash). */
function lastRecordedEra(catalogue: Catalogue): number {
  let last = 0;
  for (const id of catalogue.ids()) last = Math.max(last, catalogue.get(id)?.era ?? 0);
  return last;
}
