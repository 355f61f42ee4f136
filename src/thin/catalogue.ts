// What dm-thin does not store about a device (its size, lineage and labels), in an embedded LMDB
// store: a change writes one entry and its label-index keys, O(log n) however many devices the
// pool holds. It follows the metadata through the pool's transaction id (docs/engine.md). A
// device-set change is made durable in the intent log first and reaches the store in a batch.
import fs from 'node:fs';
import path from 'node:path';
import type { RootDatabase } from 'lmdb';
import { logger } from '../log';
import { fsyncDir } from '../util/atomic-file';
import {
  CatalogueError,
  ID_END,
  MAX_INDEXED_LABEL_BYTES,
  STATE_KEY,
  deviceKey,
  indexable,
  labelKey,
  legacyChanges,
  legacyState,
  logFile,
  openStore,
  readLegacy,
  type CatalogueEntry,
  type CatalogueIntent,
  type CatalogueState,
  type Change,
} from './catalogue-files';
import { IntentLog } from './intent-log';

export {
  ADOPTED_LABEL,
  CatalogueError,
  MAX_INDEXED_LABEL_BYTES,
  type CatalogueEntry,
  type CatalogueIntent,
} from './catalogue-files';

const log = logger('catalogue');

/** What opening found: devices adopted from the metadata, entries whose device is gone. */
export interface CatalogueReport {
  adopted: number[];
  missing: number[];
}

export interface PageOptions {
  /** Only ids above this one. */
  after?: number;
  limit?: number;
}

/** Logged changes wait in memory for at most this many, or this long, before a batch. */
const BATCH_CHANGES = 512;
const BATCH_DELAY_MS = 1000;

/** A device-set change as the intent log keeps it: `entry` null for a delete. */
interface LoggedChange {
  id: number;
  entry: CatalogueEntry | null;
  /** The pool transaction that makes it. */
  transactionId: number;
}

export class Catalogue {
  /** The state in memory is ahead of the stored one (a settled intent). */
  private stateUnsaved = false;
  /**
   * Entries not in the store yet, null hiding one: logged changes waiting for the next batch,
   * or everything a read-only open settled (adoptions, replayed changes).
   */
  private readonly overlay = new Map<number, CatalogueEntry | null>();
  /** The log record of the change under way. */
  private inFlightSeq: number | undefined;
  private batchTimer: NodeJS.Timeout | undefined;
  private entryCount = 0;
  private snapshotEntryCount = 0;

  private constructor(
    readonly dir: string,
    private readonly db: RootDatabase | undefined,
    private state: CatalogueState,
    readonly readOnly: boolean,
    private readonly log: IntentLog<LoggedChange> | undefined,
  ) {}

  /** A new, empty catalogue for a pool at `transactionId`. */
  static create(dir: string, transactionId: number): Catalogue {
    if (fs.existsSync(dir)) throw new CatalogueError(`${dir} exists already`);
    const db = openStore(dir, false);
    const log = IntentLog.open<LoggedChange>(logFile(dir), 0);
    const c = new Catalogue(dir, db, { version: 2, transactionId: -1 }, false, log);
    c.apply([], { version: 2, transactionId });
    fsyncDir(dir);
    fsyncDir(path.dirname(dir));
    return c;
  }

  /**
   * Opens the catalogue in `dir`, upgrading the JSON catalogue `legacyFile` of earlier releases
   * once. Where there is none (metadata made by another tool), it starts empty; a read-only
   * open then keeps everything in memory and never writes.
   */
  static open(dir: string, legacyFile: string, options: { readOnly?: boolean } = {}): Catalogue {
    const readOnly = options.readOnly ?? false;
    const stored = fs.existsSync(path.join(dir, 'data.mdb'));
    const legacy = fs.existsSync(legacyFile) ? readLegacy(legacyFile) : undefined;
    if (!stored && readOnly) {
      const c = new Catalogue(dir, undefined, { version: 2, transactionId: -1 }, true, undefined);
      if (legacy) c.apply(legacyChanges(legacy), legacyState(legacy));
      c.countEntries();
      return c;
    }
    const db = openStore(dir, readOnly);
    let intents: IntentLog<LoggedChange> | undefined;
    try {
      const state = db.get(STATE_KEY) as CatalogueState | undefined;
      if (state && state.version !== 2)
        throw new CatalogueError(`${dir} is not a thinpool catalogue (version ${String(state.version)})`);
      // A store from before the log holds everything: records found beside it are not replayed.
      intents = IntentLog.open<LoggedChange>(logFile(dir), state ? state.logSeq : 0, { readOnly });
      const c = new Catalogue(dir, db, state ?? { version: 2, transactionId: -1 }, readOnly, intents);
      if (!state && legacy && readOnly) c.apply(legacyChanges(legacy), legacyState(legacy));
      else if (!state && legacy) {
        // One transaction: a crash before it leaves the JSON file to upgrade again.
        c.apply(legacyChanges(legacy), legacyState(legacy));
        log.info('catalogue upgraded from JSON', { devices: Object.keys(legacy.devices).length });
      } else if (!state && !readOnly) c.apply([], c.state);
      if (legacy && !readOnly) fs.rmSync(legacyFile);
      if (!readOnly) fsyncDir(path.dirname(dir));
      c.countEntries();
      return c;
    } catch (e) {
      intents?.close();
      void db.close();
      throw e;
    }
  }

  get transactionId(): number {
    return this.state.transactionId;
  }

  get intent(): CatalogueIntent | undefined {
    return this.state.intent;
  }

  /** Entries, and how many of them are snapshots (have an origin). */
  get counts(): { entries: number; snapshots: number } {
    return { entries: this.entryCount, snapshots: this.snapshotEntryCount };
  }

  get(id: number): CatalogueEntry | undefined {
    const t = this.overlay.get(id);
    if (t !== undefined) return t ?? undefined;
    return this.db?.get(deviceKey(id)) as CatalogueEntry | undefined;
  }

  /** True when `ancestor` is on `id`'s chain of origins (a deleted link ends the chain). */
  descendsFrom(id: number, ancestor: number): boolean {
    const seen = new Set<number>();
    for (let at = this.get(id)?.origin; at !== undefined && !seen.has(at); at = this.get(at)?.origin) {
      if (at === ancestor) return true;
      seen.add(at);
    }
    return false;
  }

  /** Ids in order, from after `after`, at most `limit`: O(log n + page). */
  ids(options: PageOptions = {}): number[] {
    const start = (options.after ?? -1) + 1;
    const keys = this.db
      ? this.db.getKeys({ start: deviceKey(start), end: deviceKey(ID_END), limit: this.storeLimit(options) })
      : [];
    return this.withTransient(
      Array.from(keys, (k) => (k as [string, number])[1]),
      start,
      options.limit,
      () => true,
    );
  }

  /** Ids of the entries whose label `key` is `value`, in order (see `ids`). */
  withLabel(key: string, value: string, options: PageOptions = {}): number[] {
    if (!indexable(key, value))
      throw new CatalogueError(`label ${key}: values over ${MAX_INDEXED_LABEL_BYTES} bytes are not indexed`);
    const start = (options.after ?? -1) + 1;
    const keys = this.db
      ? this.db.getKeys({
          start: labelKey(key, value, start),
          end: labelKey(key, value, ID_END),
          limit: this.storeLimit(options),
        })
      : [];
    return this.withTransient(
      Array.from(keys, (k) => (k as [string, string, string, number])[3]),
      start,
      options.limit,
      (e) => e.labels[key] === value,
    );
  }

  /**
   * Step 1 of a device-set change, durable before the pool commits: logged (one small synced
   * write) and applied in memory; the store gets it with the next batch.
   */
  recordIntent(intent: CatalogueIntent): void {
    if (this.state.intent)
      throw new CatalogueError(
        `an earlier ${this.state.intent.op} of device ${this.state.intent.id} is unfinished`,
      );
    if (!this.log || this.readOnly) throw new CatalogueError(`${this.dir} is open read-only`);
    const stored: CatalogueIntent =
      intent.op === 'delete' ? { ...intent, entry: this.get(intent.id) } : intent;
    const record = {
      id: intent.id,
      entry: intent.op === 'create' ? intent.entry : null,
      transactionId: intent.toTransactionId,
    };
    this.inFlightSeq = this.log.append(record, () => this.persist());
    this.stage([[record.id, record.entry]]);
    this.state = { ...this.state, intent: stored };
  }

  /** Step 3: the pool committed `intent.toTransactionId`; the next batch stores it. */
  completeIntent(): void {
    const intent = this.state.intent;
    if (!intent) return;
    this.settle({ version: 2, transactionId: intent.toTransactionId });
  }

  /** The pool never committed the intent: undo it. */
  abandonIntent(): void {
    const intent = this.state.intent;
    if (!intent) return;
    this.stage([[intent.id, intent.op === 'create' ? null : (intent.entry ?? null)]]);
    this.settle({ version: 2, transactionId: intent.fromTransactionId });
  }

  /** Stores what waits in memory (the periodic commit calls this). */
  flush(): void {
    if (this.overlay.size || this.stateUnsaved) this.persist();
  }

  /** Changes that do not touch the device set (size, labels) need no pool transaction. */
  update(id: number, change: Partial<CatalogueEntry>): CatalogueEntry {
    const entry = this.get(id);
    if (!entry) throw new CatalogueError(`device ${id} is not in the catalogue`);
    const next = { ...entry, ...change };
    this.apply([[id, next]], this.state);
    return next;
  }

  /** Drops the entry of a device the metadata does not have (one `reconcile` reported missing). */
  forget(id: number): void {
    this.apply([[id, null]], this.state);
  }

  /**
   * Brings the catalogue in line with the metadata (the rules are in docs/engine.md): settles an
   * intent cut short by a crash by whether the pool has the device, adopts devices it does not
   * know with entries from `adopt`, and reports entries whose device is gone (they are kept).
   */
  reconcile(
    transactionId: number,
    deviceIds: readonly number[],
    adopt: (id: number) => CatalogueEntry,
  ): CatalogueReport {
    const inMetadata = new Set(deviceIds);
    const changes: Change[] = [];
    // Logged changes the store does not hold yet, each settled by what the metadata holds: one
    // the pool never committed (cut short, or abandoned) is left out.
    let expectedTransaction = this.state.transactionId;
    let replayed = 0;
    const pending = this.log?.pending ?? [];
    for (const { record } of pending) {
      if (inMetadata.has(record.id) !== (record.entry !== null)) continue;
      changes.push([record.id, record.entry]);
      replayed++;
      expectedTransaction = Math.max(expectedTransaction, record.transactionId);
    }
    if (pending.length)
      log.info('replayed the catalogue intent log', {
        changes: pending.length,
        committed: replayed,
        notCommitted: pending.length - replayed,
      });
    const intent = this.state.intent;
    if (intent) {
      const happened = inMetadata.has(intent.id) === (intent.op === 'create');
      if (transactionId !== intent.toTransactionId && transactionId !== intent.fromTransactionId)
        log.warn(
          'the pool moved past an unfinished catalogue change; settling it by what the metadata holds',
          {
            intent: `${intent.op} ${intent.id}`,
            catalogueTransaction: intent.fromTransactionId,
            poolTransaction: transactionId,
          },
        );
      // A completed change is settled on disk lazily, so finding one here is normal.
      if (happened) log.info(`settled the last device ${intent.op}`, { id: intent.id });
      else log.warn(`undid a device ${intent.op} cut short before the pool commit`, { id: intent.id });
      if (!happened) changes.push([intent.id, intent.op === 'create' ? null : (intent.entry ?? null)]);
    } else if (expectedTransaction >= 0 && expectedTransaction !== transactionId) {
      log.warn('the metadata changed outside thinpool since the catalogue last saw it', {
        catalogueTransaction: expectedTransaction,
        poolTransaction: transactionId,
      });
    }
    const settled = new Map(changes);
    const has = (id: number) => (settled.has(id) ? settled.get(id) !== null : this.get(id) !== undefined);
    const adopted = deviceIds.filter((id) => !has(id));
    for (const id of adopted) changes.push([id, adopt(id)]);
    if (adopted.length)
      log.info('adopted devices the catalogue did not know (unmanaged: never deleted by the CSI driver)', {
        devices: adopted.length,
        first: adopted.slice(0, 10),
      });
    const known = this.state.transactionId === transactionId && !intent && !changes.length;
    if (!known || this.stateUnsaved) this.apply(changes, { version: 2, transactionId });
    const missing = this.ids().filter((id) => !inMetadata.has(id));
    if (missing.length)
      log.warn('catalogue entries whose device is not in the metadata (kept; thin delete drops one)', {
        missing: missing.slice(0, 10),
        count: missing.length,
      });
    this.countEntries();
    return { adopted, missing };
  }

  close(): void {
    if (!this.readOnly) this.flush();
    clearTimeout(this.batchTimer);
    this.log?.close();
    void this.db?.close();
  }

  // Entry changes and the new state, stored at once in one durable LMDB transaction (memory
  // only for a read-only open).
  private apply(changes: Change[], state: CatalogueState): void {
    this.stage(changes);
    this.state = state;
    this.stateUnsaved = true;
    this.persist();
  }

  private stage(changes: Change[]): void {
    for (const [id, entry] of changes) {
      const old = this.get(id);
      this.overlay.set(id, entry);
      this.entryCount += (entry ? 1 : 0) - (old ? 1 : 0);
      this.snapshotEntryCount += (entry?.origin !== undefined ? 1 : 0) - (old?.origin !== undefined ? 1 : 0);
    }
  }

  // An intent is over: its change is in memory and in the log; a batch stores it soon.
  private settle(state: CatalogueState): void {
    this.state = state;
    this.stateUnsaved = true;
    this.inFlightSeq = undefined;
    if (this.overlay.size >= BATCH_CHANGES) this.persist();
    else
      this.batchTimer ??= setTimeout(() => {
        this.batchTimer = undefined;
        try {
          this.flush();
        } catch (e) {
          // Nothing is lost: the log keeps every change the store does not hold.
          log.error('could not store a batch of catalogue changes', { error: (e as Error).message });
        }
      }, BATCH_DELAY_MS).unref();
  }

  // Writes the overlay and the state in one LMDB transaction. The log record of a change still
  // under way stays after the stored seq, so that the next open settles it by the metadata.
  private persist(): void {
    clearTimeout(this.batchTimer);
    this.batchTimer = undefined;
    const db = this.db;
    if (this.readOnly || !db) return;
    const logSeq =
      this.inFlightSeq !== undefined ? this.inFlightSeq - 1 : (this.log?.lastSeq ?? this.state.logSeq ?? 0);
    // An intent of an earlier release's store (not in the log) stays stored until settled.
    const legacy = this.inFlightSeq === undefined ? this.state.intent : undefined;
    const stored: CatalogueState = {
      version: 2,
      transactionId: this.state.transactionId,
      logSeq,
      ...(legacy ? { intent: legacy } : {}),
    };
    db.transactionSync(() => {
      for (const [id, entry] of this.overlay) {
        const old = db.get(deviceKey(id)) as CatalogueEntry | undefined;
        if (old) {
          for (const [k, v] of Object.entries(old.labels))
            if (indexable(k, v)) db.removeSync(labelKey(k, v, id));
          db.removeSync(deviceKey(id));
        }
        if (entry) {
          db.putSync(deviceKey(id), entry);
          for (const [k, v] of Object.entries(entry.labels))
            if (indexable(k, v)) db.putSync(labelKey(k, v, id), 1);
        }
      }
      db.putSync(STATE_KEY, stored);
    });
    this.overlay.clear();
    this.stateUnsaved = false;
    this.state = { ...this.state, logSeq };
    this.log?.release(logSeq);
  }

  private countEntries(): void {
    let entries = 0;
    let snapshots = 0;
    for (const id of this.ids()) {
      entries++;
      if (this.get(id)?.origin !== undefined) snapshots++;
    }
    this.entryCount = entries;
    this.snapshotEntryCount = snapshots;
  }

  // The overlay may hide stored ids: reading that many more keeps a page full.
  private storeLimit(options: PageOptions): number | undefined {
    return options.limit === undefined ? undefined : options.limit + this.overlay.size;
  }

  // Merges the entries kept in memory into a page read from the store.
  private withTransient(
    stored: number[],
    start: number,
    limit: number | undefined,
    matches: (e: CatalogueEntry) => boolean,
  ): number[] {
    if (!this.overlay.size) return stored;
    const ids = new Set(stored.filter((id) => !this.overlay.has(id)));
    for (const [id, entry] of this.overlay) if (entry && id >= start && matches(entry)) ids.add(id);
    const sorted = [...ids].sort((a, b) => a - b);
    return limit === undefined ? sorted : sorted.slice(0, limit);
  }
}
