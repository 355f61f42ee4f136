import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { logger } from '../log';
import { deviceSizeBytes } from '../pdata/device-size';
import { NoDataSpaceError, NoMetadataSpaceError } from '../pdata/errors';
import { faultPoint } from '../util/fault-point';
import { formatSize } from '../util/size';
import { ADOPTED_LABEL, Catalogue, CatalogueEntry, CatalogueReport, PageOptions } from './catalogue';
import { DeviceIdSet } from './device-ids';
import { DeltaRange, MappedRange, allocatedRanges, deltaRanges } from './delta';
import {
  DeviceExistsError,
  DeviceNotFoundError,
  OutOfDataSpaceError,
  PoolError,
  PoolReadOnlyError,
} from './errors';
import { blockRunsToExtents } from './extents';
import { IoGate } from './io-gate';
import { MappingJournal } from './mapping-journal';
import { DeviceDetails } from './mapping';
import { ThinMetadata } from './metadata';
import { PoolConfigError, PoolCreateOptions, formatPool, poolPaths } from './pool-files';
import { NEEDS_CHECK_FLAG, Superblock, encodeSuperblock, superblockValidator } from './superblock';
import { DeviceHost, ThinDevice } from './thin-device';
import { skipBytes } from '../util/buffers';
import { SyncReadPolicy } from '../util/sync-read-policy';

const log = logger('pool');

export type { PoolCreateOptions };

export type NoSpacePolicy = 'error' | 'queue';

/** A device id, or 'auto' to let the pool choose the lowest free one. */
export type DeviceIdChoice = number | 'auto';

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
}

export interface DeviceInfo extends CatalogueEntry {
  id: number;
  details: DeviceDetails;
}

/** Metadata blocks kept back for commits, so a full metadata device can still commit. */
const METADATA_RESERVE_BLOCKS = 64;

/**
 * A thin pool: dm-thin metadata, a data file and the catalogue, with devices on top. Changes to
 * the device set follow intent → pool commit → catalogue commit, tied by the transaction id.
 */
export class Pool extends EventEmitter implements DeviceHost {
  readonly gate = new IoGate();
  readonly blockBytes: number;
  readonly skipBlockZeroing: boolean;
  private readonly syncIoMaxBytes: number;
  private readonly syncReads: SyncReadPolicy;
  private readonly open = new Map<number, ThinDevice>();
  private readonly openReadOnly = new Map<number, ThinDevice>();
  private metadataSnapQueue: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  // Set when a data write starts and again when it ends, so that clearing it before a sync
  // starts leaves it set for every write that sync may not cover.
  private dataDirty = false;
  /** A data sync running outside the exclusive section (see `periodicCommit`). */
  private earlySync: Promise<void> | undefined;
  private commitCount = 0;
  private dataSyncCount = 0;
  private readOnlyReason: string | undefined;
  // Set when the pool turned read-only because something failed (not when opened read-only):
  // writes acknowledged since the last commit are gone, so no flush may succeed any more.
  private failure: { reason: string; errno: 'EIO' | 'ENOSPC' } | undefined;
  /** The in-memory metadata was given up for the last commit (see `dropUncommitted`). */
  private dropped = false;
  private lowWaterRaised = false;
  private spaceWaiters: (() => void)[] = [];
  private closed = false;
  private journal: MappingJournal | undefined;
  /** Ids in the metadata or the catalogue: none of them may be given to a new device. */
  private readonly usedIds: DeviceIdSet;
  private metadataDevices: number;

  private constructor(
    readonly dir: string,
    public md: ThinMetadata,
    private readonly data: fsp.FileHandle,
    readonly catalogue: Catalogue,
    private readonly found: CatalogueReport,
    metadataIds: readonly number[],
    private readonly options: PoolOpenOptions,
  ) {
    super();
    this.usedIds = new DeviceIdSet([...metadataIds, ...found.missing]);
    this.metadataDevices = metadataIds.length;
    this.blockBytes = md.dataBlockBytes;
    this.skipBlockZeroing = options.skipBlockZeroing ?? false;
    this.syncIoMaxBytes = options.syncIoMaxBytes ?? 0;
    this.syncReads = new SyncReadPolicy(this.syncIoMaxBytes);
    if (options.readOnly) this.readOnlyReason = 'opened read-only';
    if (md.sb.flags & NEEDS_CHECK_FLAG)
      this.readOnlyReason = 'the metadata needs checking (needs_check is set)';
    const interval = options.commitIntervalMs ?? 1000;
    if (interval > 0 && !this.readOnlyReason) {
      this.timer = setInterval(() => void this.periodicCommit(), interval);
      this.timer.unref();
    }
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
    let data: fsp.FileHandle | undefined;
    let catalogue: Catalogue | undefined;
    try {
      if (!options.skipVerify) md.verifyTrees();
      data = await fsp.open(paths.data, options.readOnly ? 'r' : 'r+');
      const dataBytes = deviceSizeBytes(data.fd, paths.data);
      const needed = md.sb.dataSpaceMap.nrBlocks * md.dataBlockBytes;
      if (dataBytes < needed) {
        throw new PoolConfigError(
          `${paths.data} holds ${formatSize(dataBytes)} but the metadata maps ${formatSize(needed)}`,
        );
      }
      catalogue = Catalogue.open(paths.catalogue, paths.legacyCatalogue, { readOnly: options.readOnly });
      const ids = md.deviceIds();
      const found = catalogue.reconcile(md.sb.transactionId, ids, (id) => adoptedEntry(md, id));
      const pool = new Pool(dir, md, data, catalogue, found, ids, options);
      if (!pool.readOnlyReason) await pool.startJournal();
      return pool;
    } catch (e) {
      catalogue?.close();
      await data?.close();
      md.close();
      throw e;
    }
  }

  // ---- devices ----

  /** Lowest id not in use (ids are 24-bit), in O(log n). */
  nextDeviceId(): number {
    const id = this.usedIds.lowestFree();
    if (id === undefined) throw new PoolError('all 2^24 device ids are in use', 'ENOSPC');
    return id;
  }

  /** A new empty device; with id 'auto' the pool picks the lowest free id, race-free. */
  async createThin(
    id: DeviceIdChoice,
    sizeBytes: number,
    labels: Record<string, string> = {},
  ): Promise<DeviceInfo> {
    this.checkSize(sizeBytes);
    const entry = { sizeBytes, createdAt: new Date().toISOString(), labels };
    const chosen = await this.changeDeviceSet('create', id, entry, (newId) => this.md.createThin(newId));
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
    this.checkSize(sizeBytes);
    if (sizeBytes < origin.sizeBytes)
      throw new PoolError(
        `a snapshot cannot be smaller than its origin (${origin.sizeBytes} bytes)`,
        'EINVAL',
      );
    const entry = {
      sizeBytes,
      origin: originId,
      createdAt: new Date().toISOString(),
      labels: options.labels ?? {},
    };
    // The origin's writers must see its blocks as shared before any other I/O may run.
    const chosen = await this.changeDeviceSet('create', id, entry, (newId) => {
      this.md.createSnap(newId, originId);
      this.open.get(originId)?.refreshSharing();
    });
    return this.deviceInfo(chosen);
  }

  async deleteDevice(id: number): Promise<void> {
    if (!this.md.deviceExists(id)) {
      if (!this.catalogue.get(id)) throw new DeviceNotFoundError(id);
      // A catalogue entry whose device is gone (reported at open): dropping it is all there is.
      await this.gate.exclusive(() => {
        this.checkWritable();
        this.catalogue.forget(id);
        this.usedIds.delete(id);
      });
      log.warn('dropped the catalogue entry of a device the metadata does not have', { id });
      return;
    }
    await this.changeDeviceSet('delete', id, undefined, () => this.md.deleteDevice(id));
    this.open.delete(id);
    this.openReadOnly.delete(id);
  }

  /** Grows a device's virtual size (a catalogue change: dm-thin stores no size). */
  async resizeDevice(id: number, sizeBytes: number): Promise<DeviceInfo> {
    this.checkSize(sizeBytes);
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
    for (const views of [this.open, this.openReadOnly]) {
      const dev = views.get(id);
      if (dev) dev.sizeBytes = sizeBytes;
    }
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
    return this.gate.exclusive(() => this.metadataChange(() => this.md.reserveMetadataSnap()));
  }

  releaseMetadataSnap(): Promise<void> {
    return this.gate.exclusive(() => this.metadataChange(() => this.md.releaseMetadataSnap()));
  }

  /**
   * Reserves the metadata snapshot, runs `fn` (which may read with `useMetadataSnap`), then
   * releases it. Callers in one process queue up here, since only one snapshot may be held.
   */
  withMetadataSnap<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.metadataSnapQueue.then(async () => {
      await this.reserveMetadataSnap();
      try {
        return await fn();
      } finally {
        await this.releaseMetadataSnap();
      }
    });
    this.metadataSnapQueue = run.catch(() => undefined);
    return run;
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
    const path = poolPaths(this.dir).data;
    const st = fs.statSync(path);
    if (dataSizeBytes !== undefined && st.isFile()) {
      if (dataSizeBytes < st.size) throw new PoolError('shrinking the data file is not supported', 'EINVAL');
      await this.data.truncate(dataSizeBytes);
    }
    const nrBlocks = Math.floor(deviceSizeBytes(this.data.fd, path) / this.blockBytes);
    await this.gate.exclusive(() =>
      this.metadataChange(() => {
        if (nrBlocks > this.md.dataSm!.counts.nrBlocks) this.md.dataSm!.extend(nrBlocks);
      }),
    );
    log.info('pool resized', { dataBlocks: nrBlocks });
    this.lowWaterRaised = false;
    for (const wake of this.spaceWaiters.splice(0)) wake();
    this.emit('resized', nrBlocks);
    return this.status();
  }

  allocDataBlock(): number {
    const counts = this.md.dataSm!.counts;
    if (this.md.metadataSm.counts.nrAllocatable < METADATA_RESERVE_BLOCKS) {
      this.failMetadata(new NoMetadataSpaceError('a data mapping (metadata reserve reached)'));
    }
    const block = counts.allocate();
    if (block === undefined) throw new NoDataSpaceError();
    const low = this.options.lowWaterBlocks;
    if (low !== undefined && !this.lowWaterRaised && counts.nrFree < low) {
      this.lowWaterRaised = true;
      log.warn('data space below the low-water mark', { freeBlocks: counts.nrFree, lowWaterBlocks: low });
      setImmediate(() => this.emit('low-water', counts.nrFree));
    }
    return block;
  }

  releaseDataBlock(dataBlock: number): void {
    this.md.dataSm!.counts.dec(dataBlock);
  }

  /** After a failed allocation: commit to free pending blocks; then fail or wait per policy. */
  async waitForSpace(): Promise<void> {
    const counts = this.md.dataSm!.counts;
    if (counts.nrAllocatable === 0 && counts.nrFree > 0) {
      await this.commit();
      return;
    }
    if (counts.nrAllocatable > 0) return;
    if ((this.options.noSpacePolicy ?? 'error') === 'error') throw new OutOfDataSpaceError();
    const timeoutMs = this.options.noSpaceTimeoutMs ?? 60_000;
    log.warn('out of data space: queueing writes until the pool grows', { timeoutMs });
    this.emit('out-of-space');
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.spaceWaiters = this.spaceWaiters.filter((w) => w !== wake);
        reject(new OutOfDataSpaceError(`no space after waiting ${timeoutMs} ms`));
      }, timeoutMs);
      const wake = () => {
        clearTimeout(timer);
        resolve();
      };
      this.spaceWaiters.push(wake);
    });
  }

  // ---- data I/O for devices ----

  /** Reads on the event loop when `syncReads` says so (then returns undefined), else async. */
  readData(dataBlock: number, offsetInBlock: number, into: Buffer): Promise<void> | undefined {
    const base = dataBlock * this.blockBytes + offsetInBlock;
    if (!this.syncReads.runsSync(into.length)) return this.readDataAsync(dataBlock, base, into);
    for (let done = 0; done < into.length;) {
      const n = fs.readSync(this.data.fd, into, done, into.length - done, base + done);
      if (n === 0) throw new PoolError(`short read of data block ${dataBlock}`, 'EIO');
      done += n;
    }
    return undefined;
  }

  private async readDataAsync(dataBlock: number, base: number, into: Buffer): Promise<void> {
    let done = 0;
    while (done < into.length) {
      const { bytesRead } = await this.data.read(into, done, into.length - done, base + done);
      if (bytesRead === 0) throw new PoolError(`short read of data block ${dataBlock}`, 'EIO');
      done += bytesRead;
    }
  }

  async writeData(dataBlock: number, offsetInBlock: number, data: Buffer | Buffer[]): Promise<void> {
    const position = dataBlock * this.blockBytes + offsetInBlock;
    this.dataDirty = true;
    let parts = Array.isArray(data) ? data : [data];
    const total = parts.reduce((n, p) => n + p.length, 0);
    const sync = total <= this.syncIoMaxBytes;
    // writev may write less than asked; carry on from where it stopped.
    for (let done = 0; done < total;) {
      const n = sync
        ? fs.writevSync(this.data.fd, parts, position + done)
        : (await this.data.writev(parts, position + done)).bytesWritten;
      done += n;
      if (done < total) parts = skipBytes(parts, n);
    }
    this.dataDirty = true;
  }

  checkWritable(): void {
    if (this.readOnlyReason) throw new PoolReadOnlyError(this.readOnlyReason);
  }

  // ---- transactions ----

  /** Makes everything acknowledged so far durable: data first, then metadata, superblock last. */
  flush(): Promise<void> {
    return this.commit();
  }

  commit(): Promise<void> {
    return this.gate.exclusive(() => this.commitNow());
  }

  status(): PoolStatus {
    const sb = this.md.sb;
    return {
      path: this.dir,
      mode: this.readOnlyReason ? 'read-only' : 'read-write',
      transactionId: sb.transactionId,
      time: sb.time,
      dataBlockBytes: this.blockBytes,
      dataBlocksUsed: this.md.dataSm!.counts.nrAllocated,
      dataBlocksTotal: this.md.dataSm!.counts.nrBlocks,
      metadataBlocksUsed: this.md.metadataSm.counts.nrAllocated,
      metadataBlocksTotal: this.md.metadataSm.counts.nrBlocks,
      heldMetadataRoot: sb.heldRoot || null,
      devices: this.metadataDevices,
      needsCheck: (sb.flags & NEEDS_CHECK_FLAG) !== 0,
      commits: this.commitCount,
      dataSyncs: this.dataSyncCount,
      catalogue: { ...this.catalogue.counts, ...this.found },
    };
  }

  get readOnlyBecause(): string | undefined {
    return this.readOnlyReason;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    if (!this.readOnlyReason) await this.commit();
    this.journal?.close();
    this.catalogue.close();
    await this.data.close();
    this.md.close();
  }

  // Replays what a killed predecessor acknowledged without committing (its data is in the page
  // cache), commits it, then journals this process's own changes.
  private async startJournal(): Promise<void> {
    const journal = MappingJournal.open(poolPaths(this.dir).journal);
    if (!journal) {
      log.warn('no boot id: writes acknowledged but not yet flushed are lost if this process is killed');
      return;
    }
    try {
      const replay = journal.replay(this.md);
      if (replay.note) log.warn('mapping journal', { note: replay.note });
      if (replay.applied > 0) {
        this.dataDirty = true;
        await this.syncData();
        this.guardMetadata(() => this.md.commit());
        this.commitCount++;
        log.info('replayed mapping changes acknowledged before the last stop', { records: replay.applied });
      }
      journal.committed(this.md.sb);
    } catch (e) {
      journal.close();
      throw new PoolError(
        `replaying ${poolPaths(this.dir).journal} failed (${(e as Error).message}); moving it aside ` +
          'opens the pool without the writes it holds',
        'EIO',
      );
    }
    this.journal = journal;
    this.md.listener = journal;
  }

  /**
   * `dataOnlyIfMapped`: sync the data file only when there is metadata to commit. The periodic
   * commit uses it: new mappings must not reach the disk before the data they point at, but
   * overwrites of mapped blocks change no metadata, and their durability is the client's flush
   * (dm-thin's periodic commit does the same). Syncing them every second held all I/O back
   * while a second's dirty pages went to disk.
   */
  private async commitNow(dataOnlyIfMapped = false): Promise<void> {
    await this.earlySyncDone();
    if (this.failure) throw this.failedError();
    const metadataChanged = this.md.hasUncommittedChanges;
    if (this.readOnlyReason) return;
    if (!metadataChanged && (!this.dataDirty || dataOnlyIfMapped)) return;
    await this.syncData();
    if (metadataChanged) this.commitMetadata();
  }

  private async periodicCommit(): Promise<void> {
    // Nothing to commit: do not hold I/O back just to find that out.
    if (this.readOnlyReason || !this.md.hasUncommittedChanges || this.earlySync) return;
    try {
      // Most dirty data goes to disk while I/O goes on, so the sync the commit needs inside its
      // exclusive section (where writers wait) has only what was written meanwhile left to do.
      if (this.dataDirty) {
        this.dataDirty = false;
        // A failure fails the pool before anything else can run: a flush that came after it
        // would sync again and be told of no error, the kernel having reported it here.
        this.earlySync = this.data.datasync().then(
          () => void this.dataSyncCount++,
          (e: unknown) => {
            throw this.failIo(e, 'data');
          },
        );
        try {
          await this.earlySync;
        } finally {
          this.earlySync = undefined;
        }
      }
      await this.gate.exclusive(async () => {
        await this.commitNow(true);
        // Settles the last device-set change on disk (opening would roll it forward anyway).
        this.catalogue.flush();
      });
    } catch (e) {
      log.error('periodic commit failed', { error: (e as Error).message });
      if (this.failure && !this.dropped) await this.gate.exclusive(async () => this.dropUncommitted(false));
    }
  }

  /** A metadata change run alone, committed at once. */
  private async metadataChange<T>(fn: () => T): Promise<T> {
    this.checkWritable();
    // The commit also carries the mappings of writes made since the last one: their data first.
    await this.syncData();
    return this.guardMetadata(() => {
      const result = fn();
      this.commitMetadata();
      return result;
    });
  }

  // A commit that fails half-way leaves blocks written or not, synced or not, and the block
  // manager refusing further commits: carry on read-only from the last commit, as dm-thin does.
  private commitMetadata(): void {
    try {
      this.md.commit();
    } catch (e) {
      if (e instanceof NoMetadataSpaceError) this.failMetadata(e);
      const error = this.failIo(e, 'metadata');
      this.dropUncommitted(true);
      throw error;
    }
    this.commitCount++;
  }

  // Writes an early sync took for clean are only clean once it is done (a failed one set them
  // dirty again).
  private async earlySyncDone(): Promise<void> {
    if (this.earlySync) await this.earlySync.catch(() => undefined);
  }

  // Callers hold the gate exclusively (or the pool is opening).
  private async syncData(): Promise<void> {
    await this.earlySyncDone();
    if (this.failure) throw this.failedError();
    if (!this.dataDirty) return;
    try {
      await this.data.datasync();
    } catch (e) {
      const error = this.failIo(e, 'data');
      this.dropUncommitted(false);
      throw error;
    }
    this.dataSyncCount++;
    this.dataDirty = false;
  }

  // The kernel reports a failed sync once and may drop the pages it could not write, so after
  // a failed write or sync of the pool's files nothing acknowledged since the last commit can be
  // made durable: the pool turns read-only and every later flush fails (until it is reopened).
  private failIo(cause: unknown, file: 'data' | 'metadata'): PoolReadOnlyError {
    if (cause instanceof PoolReadOnlyError) return cause;
    if (!this.failure) {
      const message = (cause as Error).message;
      const code = (cause as NodeJS.ErrnoException).code;
      this.failure = {
        reason: `a write or sync of the ${file} failed (${message}); reopen the pool once the device works`,
        errno: code === 'ENOSPC' ? 'ENOSPC' : 'EIO',
      };
      this.readOnlyReason = this.failure.reason;
      if (this.timer) clearInterval(this.timer);
      log.error('pool switched to read-only: a write or sync failed', { file, error: message });
    }
    return this.failedError();
  }

  private failedError(): PoolReadOnlyError {
    return new PoolReadOnlyError(this.failure!.reason, this.failure!.errno);
  }

  /**
   * Gives up the in-memory metadata for the last commit, read-only (dm-thin's abort_metadata):
   * it may be half-changed, or map data that never reached the disk. `needsCheck` also flags the
   * committed superblock, best effort (a failing device may refuse that write too). After a
   * data failure the journal restarts on the last commit: its records map data that may be lost.
   * Runs where no I/O is in flight (inside the gate's exclusive section).
   */
  private dropUncommitted(needsCheck: boolean): void {
    if (this.dropped) return;
    this.dropped = true;
    const path = poolPaths(this.dir).metadata;
    this.md.close();
    if (needsCheck) {
      try {
        const committed = ThinMetadata.open(path);
        try {
          const sb = { ...committed.sb, flags: committed.sb.flags | NEEDS_CHECK_FLAG };
          committed.bm.writeNow(0, encodeSuperblock(sb), superblockValidator);
        } finally {
          committed.close();
        }
      } catch (e) {
        log.error('could not set needs_check in the metadata superblock', { error: (e as Error).message });
      }
    }
    this.md = ThinMetadata.open(path, { readOnly: true });
    if (!needsCheck) this.journal?.committed(this.md.sb);
    for (const dev of this.open.values()) dev.refreshSharing();
  }

  // Running out of metadata space mid-change leaves the in-memory trees half-changed: drop them,
  // flag the committed superblock needs_check and carry on read-only from the last commit.
  private guardMetadata<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (e instanceof NoMetadataSpaceError) this.failMetadata(e);
      throw e;
    }
  }

  private failMetadata(cause: Error): never {
    log.error('metadata space exhausted: pool switched to read-only with needs_check set', {
      error: cause.message,
    });
    this.readOnlyReason =
      'out of metadata space (needs_check is set; run thinpool pool check, then grow the metadata)';
    this.failure ??= { reason: this.readOnlyReason, errno: 'EIO' };
    if (this.timer) clearInterval(this.timer);
    this.dropUncommitted(true);
    throw new PoolReadOnlyError(this.readOnlyReason);
  }

  // intent → pool commit with the next transaction id → catalogue commit. A crash between any
  // two steps is settled by `reconcile` on the next open.
  private async changeDeviceSet(
    op: 'create' | 'delete',
    want: DeviceIdChoice,
    entry: CatalogueEntry | undefined,
    apply: (id: number) => void,
  ): Promise<number> {
    return this.gate.exclusive(async () => {
      this.checkWritable();
      const id = want === 'auto' ? this.nextDeviceId() : want;
      if (op === 'create' && (this.md.deviceExists(id) || this.catalogue.get(id)))
        throw new DeviceExistsError(id);
      await this.commitNow();
      const from = this.md.sb.transactionId;
      const to = from + 1;
      this.catalogue.recordIntent(
        op === 'create'
          ? { op, id, entry: entry!, fromTransactionId: from, toTransactionId: to }
          : { op, id, fromTransactionId: from, toTransactionId: to },
      );
      faultPoint(`${op}:after-intent`);
      try {
        await this.metadataChange(() => {
          apply(id);
          this.md.setTransactionId(from, to);
        });
      } catch (e) {
        if (!(e instanceof PoolReadOnlyError)) this.catalogue.abandonIntent();
        throw e;
      }
      faultPoint(`${op}:after-pool-commit`);
      if (op === 'create') {
        this.usedIds.add(id);
        this.metadataDevices++;
      } else {
        this.usedIds.delete(id);
        this.metadataDevices--;
      }
      this.catalogue.completeIntent();
      faultPoint(`${op}:after-catalogue`);
      log.info(`${op === 'create' ? 'created' : 'deleted'} thin device`, { id, transactionId: to });
      return id;
    });
  }

  private checkSize(sizeBytes: number): void {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512) {
      throw new PoolError(`device size ${sizeBytes} must be a positive multiple of 512 bytes`, 'EINVAL');
    }
  }
}

// dm-thin stores no device size: an adopted device gets one that covers its last mapped block
// (an LVM thin volume may be larger; `pool import-xml --size`, `resizeDevice` or a CSI expand
// grows it).
function adoptedEntry(md: ThinMetadata, id: number): CatalogueEntry {
  const root = md.deviceRoot(id);
  const last = root === undefined ? undefined : md.mappings.lastKey(root);
  return {
    sizeBytes: ((last ?? 0) + 1) * md.dataBlockBytes,
    createdAt: new Date().toISOString(),
    labels: { [ADOPTED_LABEL]: 'true' },
  };
}
