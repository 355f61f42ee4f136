// The catalogue's files: the shapes it stores, the keys of its LMDB store, opening that store
// safely, and reading the JSON catalogue of the first release for the one-time upgrade.
import fs from 'node:fs';
import path from 'node:path';
import { open, type RootDatabase } from 'lmdb';

export interface CatalogueEntry {
  sizeBytes: number;
  /** The device this one is a snapshot of, when it is one. */
  origin?: number;
  createdAt: string;
  labels: Record<string, string>;
  /** With era tracking: the era that began at this snapshot (every later write is in it or later). */
  era?: number;
  /**
   * With era tracking: the era of the device's last revert (or its origin's, for a snapshot).
   * A revert maps blocks without writing them: to era readers every block changed in that era.
   */
  revertedEra?: number;
}

/**
 * A change to the device set. The catalogue logs and applies it before the pool commits;
 * `entry` of a delete is the removed entry, so that a roll back can restore it.
 */
export type CatalogueIntent =
  | { op: 'create'; id: number; entry: CatalogueEntry; fromTransactionId: number; toTransactionId: number }
  | { op: 'delete'; id: number; entry?: CatalogueEntry; fromTransactionId: number; toTransactionId: number };

/** Set on entries made for devices found in the metadata (thin_restore, another tool's pool). */
export const ADOPTED_LABEL = 'thinpool.adopted';
/** Label pairs longer than this are stored but not indexed (LMDB keys are bounded). */
export const MAX_INDEXED_LABEL_BYTES = 1024;

export interface CatalogueState {
  version: 2;
  /** The pool transaction id the catalogue matches; -1 before it has ever seen the pool. */
  transactionId: number;
  /** In memory, the change under way; stored only by releases before the intent log. */
  intent?: CatalogueIntent;
  /** The last intent-log record the store holds (absent: written before the log existed). */
  logSeq?: number;
}

export /** The catalogue of the first release: one JSON file rewritten on every change. */
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

export const STATE_KEY = ['state'];
export const ID_END = 2 ** 25; // above every 24-bit device id
export const deviceKey = (id: number) => ['device', id];
export const labelKey = (key: string, value: string, id: number) => ['label', key, value, id];
export const indexable = (key: string, value: string) =>
  Buffer.byteLength(key) + Buffer.byteLength(value) <= MAX_INDEXED_LABEL_BYTES;

/** One entry's new value (null: gone), applied with the state in one LMDB transaction. */
export type Change = [id: number, entry: CatalogueEntry | null];

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

export function openStore(dir: string, readOnly: boolean): RootDatabase {
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

export const logFile = (dir: string) => path.join(dir, 'intents.log');

export function readLegacy(file: string): LegacyCatalogue {
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
export function legacyChanges(legacy: LegacyCatalogue): Change[] {
  const entries = new Map<number, CatalogueEntry | null>(
    Object.entries(legacy.devices).map(([id, entry]) => [Number(id), entry]),
  );
  const intent = legacy.intent;
  if (intent) entries.set(intent.id, intent.op === 'create' ? intent.entry : null);
  return [...entries];
}

export function legacyState(legacy: LegacyCatalogue): CatalogueState {
  const intent = legacy.intent;
  if (intent?.op === 'delete')
    return {
      version: 2,
      transactionId: legacy.transactionId,
      intent: { ...intent, entry: legacy.devices[String(intent.id)] },
    };
  return { version: 2, transactionId: legacy.transactionId, ...(intent ? { intent } : {}) };
}
