import fs from 'node:fs';
import { logger } from '../log';
import { writeFileAtomic } from '../util/atomic-file';

const log = logger('catalogue');

/** What dm-thin does not store about a device: its size, lineage and labels. */
export interface CatalogueEntry {
  sizeBytes: number;
  /** The device this one is a snapshot of, when it is one. */
  origin?: number;
  createdAt: string;
  labels: Record<string, string>;
}

/** A change to the device set, recorded before the pool commits it. */
export type CatalogueIntent =
  | { op: 'create'; id: number; entry: CatalogueEntry; fromTransactionId: number; toTransactionId: number }
  | { op: 'delete'; id: number; fromTransactionId: number; toTransactionId: number };

export interface CatalogueData {
  version: 1;
  /** The pool transaction id this catalogue matches. */
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

/**
 * The catalogue file (`catalogue.json` in the pool directory). Every write replaces the file
 * atomically; it is kept in step with the metadata through the pool's transaction id.
 */
export class Catalogue {
  /** Changes applied in memory but not yet written (a completed intent waits for the next write). */
  private unsaved = false;

  private constructor(
    readonly file: string,
    private data: CatalogueData,
  ) {}

  static create(file: string, transactionId: number): Catalogue {
    const c = new Catalogue(file, { version: 1, transactionId, devices: {} });
    c.save();
    return c;
  }

  static load(file: string): Catalogue {
    let data: CatalogueData;
    try {
      data = JSON.parse(fs.readFileSync(file, 'utf8')) as CatalogueData;
    } catch (e) {
      throw new CatalogueError(`cannot read the catalogue ${file}: ${(e as Error).message}`);
    }
    if (data.version !== 1 || typeof data.transactionId !== 'number' || typeof data.devices !== 'object') {
      throw new CatalogueError(`${file} is not a thinpool catalogue (version ${String(data.version)})`);
    }
    return new Catalogue(file, data);
  }

  get transactionId(): number {
    return this.data.transactionId;
  }

  get intent(): CatalogueIntent | undefined {
    return this.data.intent;
  }

  get(id: number): CatalogueEntry | undefined {
    return this.data.devices[String(id)];
  }

  ids(): number[] {
    return Object.keys(this.data.devices)
      .map(Number)
      .sort((a, b) => a - b);
  }

  /** Step 1 of a device-set change: durable before the pool commits. */
  recordIntent(intent: CatalogueIntent): void {
    if (this.data.intent)
      throw new CatalogueError(
        `an earlier ${this.data.intent.op} of device ${this.data.intent.id} is unfinished`,
      );
    this.data.intent = intent;
    this.save();
  }

  /**
   * Step 3: the pool committed `intent.toTransactionId`; make the catalogue say so. The file
   * is rewritten lazily (with the next intent, or on `flush`): until then it still holds the
   * intent, which opening the pool rolls forward, so durability costs no extra sync here.
   */
  completeIntent(): void {
    const intent = this.data.intent;
    if (!intent) return;
    if (intent.op === 'create') this.data.devices[String(intent.id)] = intent.entry;
    else delete this.data.devices[String(intent.id)];
    this.data.transactionId = intent.toTransactionId;
    delete this.data.intent;
    this.unsaved = true;
  }

  /** Writes changes kept in memory (see `completeIntent`). */
  flush(): void {
    if (this.unsaved) this.save();
  }

  /** The pool never committed the intent: forget it (written lazily, like `completeIntent`). */
  abandonIntent(): void {
    delete this.data.intent;
    this.unsaved = true;
  }

  /**
   * Brings the catalogue in line with the metadata after a crash between the steps of a change
   * (the rules are in docs/engine.md), then insists that both name the same devices.
   */
  reconcile(transactionId: number, deviceIds: number[]): void {
    const intent = this.data.intent;
    if (intent) {
      const committed = transactionId === intent.toTransactionId;
      if (!committed && transactionId !== intent.fromTransactionId) {
        throw new CatalogueError(
          `catalogue intent (${intent.op} ${intent.id}, transaction ${intent.fromTransactionId}→${intent.toTransactionId}) ` +
            `matches neither side of the pool's transaction id ${transactionId}`,
        );
      }
      log.warn(
        `${committed ? 'finishing' : 'dropping'} a device ${intent.op} cut short ${committed ? 'after' : 'before'} the pool commit`,
        {
          id: intent.id,
        },
      );
      // In memory only; the file follows at the next commit (a read-only open never writes it).
      if (committed) this.completeIntent();
      else this.abandonIntent();
    } else if (this.data.transactionId !== transactionId) {
      throw new CatalogueError(
        `catalogue is at transaction ${this.data.transactionId} but the pool is at ${transactionId}`,
      );
    }
    const inMetadata = deviceIds.join(',');
    const inCatalogue = this.ids().join(',');
    if (inMetadata !== inCatalogue) {
      throw new CatalogueError(
        `devices in the metadata (${inMetadata}) and the catalogue (${inCatalogue}) differ`,
      );
    }
  }

  /** Changes that do not touch the device set (size, labels) need no pool transaction. */
  update(id: number, change: Partial<CatalogueEntry>): CatalogueEntry {
    const entry = this.get(id);
    if (!entry) throw new CatalogueError(`device ${id} is not in the catalogue`);
    const next = { ...entry, ...change };
    this.data.devices[String(id)] = next;
    this.save();
    return next;
  }

  private save(): void {
    writeFileAtomic(this.file, JSON.stringify(this.data, null, 2) + '\n');
    this.unsaved = false;
  }
}
