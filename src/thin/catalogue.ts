// What dm-thin does not store about a device (its size, lineage and labels), in an embedded LMDB
// store: a change writes one entry and its label-index keys, O(log n) however many devices the
// pool holds. It follows the metadata through the pool's transaction id (docs/engine.md).
import fs from 'node:fs';
import path from 'node:path';
import { open, type RootDatabase } from 'lmdb';
import { logger } from '../log';
import { fsyncDir } from '../util/atomic-file';

const log = logger('catalogue');

export interface CatalogueEntry {
  sizeBytes: number;
  /** The device this one is a snapshot of, when it is one. */
  origin?: number;
  createdAt: string;
  labels: Record<string, string>;
}

/**
 * A change to the device set. The catalogue applies it together with recording it, before the
 * pool commits; `entry` of a delete is the removed entry, so that a roll back can restore it.
 */
export type CatalogueIntent =
  | { op: 'create'; id: number; entry: CatalogueEntry; fromTransactionId: number; toTransactionId: number }
  | { op: 'delete'; id: number; entry?: CatalogueEntry; fromTransactionId: number; toTransactionId: number };

/** What opening found: devices adopted from the metadata, entries whose device is gone. */
export interface CatalogueReport {
  adopted: number[];
  missing: number[];
}

/** Set on entries made for devices found in the metadata (thin_restore, another tool's pool). */
export const ADOPTED_LABEL = 'thinpool.adopted';
/** Label pairs longer than this are stored but not indexed (LMDB keys are bounded). */
export const MAX_INDEXED_LABEL_BYTES = 1024;

export interface PageOptions {
  /** Only ids above this one. */
  after?: number;
  limit?: number;
}

interface CatalogueState {
  version: 2;
  /** The pool transaction id the catalogue matches; -1 before it has ever seen the pool. */
  transactionId: number;
  intent?: CatalogueIntent;
}

/** The catalogue of the first release: one JSON file rewritten on every change. */
interface LegacyCatalogue {
  version: 1;
  transactionId: number;
  devices: Record<string, CatalogueEntry>;
  intent?: CatalogueIntent;
}

export class CatalogueError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CatalogueError';
  }
}

const STATE_KEY = ['state'];
const ID_END = 2 ** 25; // above every 24-bit device id
const deviceKey = (id: number) => ['device', id];
const labelKey = (key: string, value: string, id: number) => ['label', key, value, id];
const indexable = (key: string, value: string) =>
  Buffer.byteLength(key) + Buffer.byteLength(value) <= MAX_INDEXED_LABEL_BYTES;

/** One entry's new value (null: gone), applied with the state in one LMDB transaction. */
type Change = [id: number, entry: CatalogueEntry | null];

export class Catalogue {
  /** The intent was settled in memory (`completeIntent`); the stored state still holds it. */
  private stateUnsaved = false;
  /** Changes a read-only open made in memory only (adoptions, settled intents); null hides. */
  private readonly transient = new Map<number, CatalogueEntry | null>();
  private entryCount = 0;
  private snapshotEntryCount = 0;

  private constructor(
    readonly dir: string,
    private readonly db: RootDatabase | undefined,
    private state: CatalogueState,
    readonly readOnly: boolean,
  ) {}

  /** A new, empty catalogue for a pool at `transactionId`. */
  static create(dir: string, transactionId: number): Catalogue {
    if (fs.existsSync(dir)) throw new CatalogueError(`${dir} exists already`);
    const c = new Catalogue(dir, openStore(dir, false), { version: 2, transactionId: -1 }, false);
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
      const c = new Catalogue(dir, undefined, { version: 2, transactionId: -1 }, true);
      if (legacy) c.apply(legacyChanges(legacy), legacyState(legacy));
      c.countEntries();
      return c;
    }
    const db = openStore(dir, readOnly);
    try {
      const state = db.get(STATE_KEY) as CatalogueState | undefined;
      if (state && state.version !== 2)
        throw new CatalogueError(`${dir} is not a thinpool catalogue (version ${String(state.version)})`);
      const c = new Catalogue(dir, db, state ?? { version: 2, transactionId: -1 }, readOnly);
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
      db.close();
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
    const t = this.transient.get(id);
    if (t !== undefined) return t ?? undefined;
    return this.db?.get(deviceKey(id)) as CatalogueEntry | undefined;
  }

  /** Ids in order, from after `after`, at most `limit`: O(log n + page). */
  ids(options: PageOptions = {}): number[] {
    const start = (options.after ?? -1) + 1;
    const keys = this.db
      ? this.db.getKeys({ start: deviceKey(start), end: deviceKey(ID_END), limit: options.limit })
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
          limit: options.limit,
        })
      : [];
    return this.withTransient(
      Array.from(keys, (k) => (k as [string, string, string, number])[3]),
      start,
      options.limit,
      (e) => e.labels[key] === value,
    );
  }

  /** Step 1 of a device-set change, durable before the pool commits: record it and apply it. */
  recordIntent(intent: CatalogueIntent): void {
    if (this.state.intent)
      throw new CatalogueError(
        `an earlier ${this.state.intent.op} of device ${this.state.intent.id} is unfinished`,
      );
    const stored: CatalogueIntent =
      intent.op === 'delete' ? { ...intent, entry: this.get(intent.id) } : intent;
    this.apply([[intent.id, intent.op === 'create' ? intent.entry : null]], {
      version: 2,
      transactionId: this.state.transactionId,
      intent: stored,
    });
  }

  /**
   * Step 3: the pool committed `intent.toTransactionId`. The entry is in place already, so this
   * only settles the state in memory; it is written with the next change (or `flush`), and
   * until then the stored intent is rolled forward by the next open: no extra sync here.
   */
  completeIntent(): void {
    const intent = this.state.intent;
    if (!intent) return;
    this.state = { version: 2, transactionId: intent.toTransactionId };
    this.stateUnsaved = true;
  }

  /** The pool never committed the intent: undo it. */
  abandonIntent(): void {
    const intent = this.state.intent;
    if (!intent) return;
    this.apply([[intent.id, intent.op === 'create' ? null : (intent.entry ?? null)]], {
      version: 2,
      transactionId: intent.fromTransactionId,
    });
  }

  /** Writes a state settled in memory (see `completeIntent`). */
  flush(): void {
    if (this.stateUnsaved && !this.readOnly) this.apply([], this.state);
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
    } else if (this.state.transactionId >= 0 && this.state.transactionId !== transactionId) {
      log.warn('the metadata changed outside thinpool since the catalogue last saw it', {
        catalogueTransaction: this.state.transactionId,
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
    void this.db?.close();
  }

  // Applies entry changes and the new state together: one durable LMDB transaction, or memory
  // only for a read-only open.
  private apply(changes: Change[], state: CatalogueState): void {
    const before = changes.map(([id]) => this.get(id));
    if (this.readOnly || !this.db) {
      for (const [id, entry] of changes) this.transient.set(id, entry);
    } else {
      const db = this.db;
      db.transactionSync(() => {
        changes.forEach(([id, entry], i) => {
          const old = before[i];
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
        });
        db.putSync(STATE_KEY, state);
      });
    }
    changes.forEach(([, entry], i) => {
      const old = before[i];
      this.entryCount += (entry ? 1 : 0) - (old ? 1 : 0);
      this.snapshotEntryCount += (entry?.origin !== undefined ? 1 : 0) - (old?.origin !== undefined ? 1 : 0);
    });
    this.state = state;
    this.stateUnsaved = false;
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

  // Merges the ids kept in memory (read-only opens) into a page read from the store.
  private withTransient(
    stored: number[],
    start: number,
    limit: number | undefined,
    matches: (e: CatalogueEntry) => boolean,
  ): number[] {
    if (!this.transient.size) return stored;
    const ids = new Set(stored.filter((id) => !this.transient.has(id)));
    for (const [id, entry] of this.transient) if (entry && id >= start && matches(entry)) ids.add(id);
    const sorted = [...ids].sort((a, b) => a - b);
    return limit === undefined ? sorted : sorted.slice(0, limit);
  }
}

// LMDB trusts its file and can crash the process on garbage, so a file whose two meta pages do
// not look like LMDB's (magic, format version 2, the page size the first one names) is refused
// before it is opened. Damage deeper in the file is not caught here.
const LMDB_MAGIC = 0xbeefc0de;
function checkStoreFile(file: string): void {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const head = Buffer.alloc(64);
    const meta = (offset: number) =>
      fs.readSync(fd, head, 0, 64, offset) === 64 &&
      head.readUInt32LE(0x18) === LMDB_MAGIC &&
      head.readUInt32LE(0x1c) === 2;
    const ok = meta(0) && [4096, 16384, 65536].includes(head.readUInt32LE(0x30));
    const pageBytes = head.readUInt32LE(0x30);
    if (!ok || size < 2 * pageBytes || !meta(pageBytes))
      throw new CatalogueError(`${file} is not an LMDB catalogue (damaged or another file)`);
  } finally {
    fs.closeSync(fd);
  }
}

function openStore(dir: string, readOnly: boolean): RootDatabase {
  const file = path.join(dir, 'data.mdb');
  if (fs.existsSync(file)) checkStoreFile(file);
  try {
    // overlappingSync off: a transaction is on disk when transactionSync returns, which the
    // intent → pool commit order needs.
    return open({ path: dir, noSubdir: false, readOnly, overlappingSync: false });
  } catch (e) {
    throw new CatalogueError(`cannot open the catalogue ${dir}: ${(e as Error).message}`);
  }
}

function readLegacy(file: string): LegacyCatalogue {
  let data: LegacyCatalogue;
  try {
    data = JSON.parse(fs.readFileSync(file, 'utf8')) as LegacyCatalogue;
  } catch (e) {
    throw new CatalogueError(`cannot read the catalogue ${file}: ${(e as Error).message}`);
  }
  if (data.version !== 1 || typeof data.transactionId !== 'number' || typeof data.devices !== 'object')
    throw new CatalogueError(`${file} is not a thinpool catalogue (version ${String(data.version)})`);
  return data;
}

// The JSON catalogue applied an intent only when it completed; here it is applied on record.
function legacyChanges(legacy: LegacyCatalogue): Change[] {
  const entries = new Map<number, CatalogueEntry | null>(
    Object.entries(legacy.devices).map(([id, entry]) => [Number(id), entry]),
  );
  const intent = legacy.intent;
  if (intent) entries.set(intent.id, intent.op === 'create' ? intent.entry : null);
  return [...entries];
}

function legacyState(legacy: LegacyCatalogue): CatalogueState {
  const intent = legacy.intent;
  if (intent?.op === 'delete')
    return {
      version: 2,
      transactionId: legacy.transactionId,
      intent: { ...intent, entry: legacy.devices[String(intent.id)] },
    };
  return { version: 2, transactionId: legacy.transactionId, ...(intent ? { intent } : {}) };
}
