import fs from 'node:fs';
import { logger } from '../../log';
import { EraJournal, ROLLOVER } from './era-journal';
import { EraMetadata, eraMetadataBytes } from './era-metadata';

const log = logger('era');

export interface EraPaths {
  metadata: string;
  journal: string;
}

export interface EraStatus {
  currentEra: number;
  nrBlocks: number;
  /** Blocks marked in the current era so far. */
  markedThisEra: number;
  /** Era covered by the held metadata snapshot (its last complete era), if one is held. */
  snapshotEra?: number;
  metadataSnapBlock?: number;
  /** Why tracking stopped, when it did (answers are refused until the pool is reopened). */
  failed?: string;
}

export class EraFailedError extends Error {
  constructor(cause: Error) {
    super(
      `era tracking stopped after a failure (${cause.message}): its answers would miss writes; ` +
        'reopening the pool counts every block as written and tracks again',
    );
    this.name = 'EraFailedError';
  }
}

/**
 * Era tracking of a pool's data blocks: which blocks each write touches, in dm-era's format. The
 * current era's marks live in memory and in the era journal; the era metadata takes them at
 * every era commit (the pool's periodic commit, a checkpoint, close). Writes are marked before
 * they are issued, so a mark is never missing for data that reached the file.
 */
export class EraTracker {
  private marked: Uint8Array;
  private markedCount = 0;
  private pending: number[] = [];
  private readonly scratch: number[] = [];
  /** Marks not yet in the journal, and the microtask that will write them. */
  private unjournaled: number[] = [];
  private journalWrite: Promise<void> | undefined;
  // A failed era write must not fail the data write it came with: tracking stops instead, and
  // every answer after it is refused (an answer that misses a block would be wrong).
  private failure: Error | undefined;

  private constructor(
    private readonly md: EraMetadata,
    private readonly journal: EraJournal | undefined,
    private readonly journalPath = '',
  ) {
    this.marked = new Uint8Array(Math.ceil(md.nrBlocks / 8));
  }

  /** Creates era metadata for `nrBlocks` data blocks of `dataBlockSectors` each. */
  static format(paths: EraPaths, nrBlocks: number, dataBlockSectors: number): void {
    for (const f of [paths.metadata, paths.journal]) fs.rmSync(f, { force: true });
    const fd = fs.openSync(paths.metadata, 'wx', 0o600);
    fs.ftruncateSync(fd, eraMetadataBytes(nrBlocks));
    fs.closeSync(fd);
    const md = EraMetadata.format(paths.metadata, { nrBlocks, dataBlockSectors });
    md.sb.cleanShutdown = true;
    md.commit();
    md.close();
  }

  static exists(paths: EraPaths): boolean {
    return fs.existsSync(paths.metadata);
  }

  /**
   * Opens the era metadata: replays the journal of a killed predecessor, marks every block
   * written after a machine crash that lost marks from the page cache, then starts a new era (as
   * dm-era does on every resume).
   */
  static open(
    paths: EraPaths,
    nrBlocks: number,
    options: { readOnly?: boolean; lastRecordedEra?: () => number } = {},
  ): EraTracker {
    const md = EraMetadata.open(paths.metadata, options);
    if (options.readOnly) return new EraTracker(md, undefined);
    const journal = EraJournal.open(paths.journal);
    try {
      const { blocks, sameBoot } = journal.read();
      const replayed = replay(md, blocks);
      if (!md.sb.cleanShutdown && !sameBoot) {
        // Marks written but not synced before the crash are gone with the page cache, and so
        // may the writes they covered be, or not: every block counts as written now, in an era
        // no earlier than any a snapshot recorded (its checkpoint may not have reached the disk).
        md.rollover(options.lastRecordedEra?.() ?? 0);
        log.warn('era metadata was not closed cleanly before a reboot: every block is marked written', {
          era: md.currentEra,
        });
        md.mark(Array.from({ length: md.nrBlocks }, (_, i) => i));
      } else if (replayed) {
        log.info('replayed era marks of the last run', { records: replayed, era: md.currentEra });
      }
      md.rollover();
      if (nrBlocks > md.nrBlocks) {
        log.info('era tracking grows with the pool', { from: md.nrBlocks, to: nrBlocks });
        md.grow(nrBlocks);
      }
      md.sb.cleanShutdown = false;
      md.commit();
      journal.restart();
    } catch (e) {
      journal.close();
      md.close();
      throw e;
    }
    return new EraTracker(md, journal, paths.journal);
  }

  get currentEra(): number {
    return this.md.currentEra;
  }

  get nrBlocks(): number {
    return this.md.nrBlocks;
  }

  /** The pool grew to `nrBlocks` data blocks. */
  grow(nrBlocks: number): void {
    if (nrBlocks <= this.md.nrBlocks || this.failure) return;
    this.guard(() => {
      this.commit();
      this.md.grow(nrBlocks);
      this.md.commit();
    });
    const marked = new Uint8Array(Math.ceil(nrBlocks / 8));
    marked.set(this.marked);
    this.marked = marked;
  }

  /**
   * Called before a write to `count` data blocks from `first` is issued; the write waits for the
   * returned promise (there is one when a block is new in this era). New marks go to the journal
   * in one write from a microtask, so writes started together share it.
   */
  mark(first: number, count: number): Promise<void> | undefined {
    if (this.failure) return undefined;
    const fresh = this.scratch;
    const end = Math.min(first + count, this.md.nrBlocks);
    for (let b = first; b < end; b++) {
      const bit = 1 << (b & 7);
      if (this.marked[b >> 3] & bit) continue;
      this.marked[b >> 3] |= bit;
      fresh.push(b);
    }
    if (fresh.length === 0) return undefined;
    this.markedCount += fresh.length;
    for (const b of fresh) {
      this.pending.push(b);
      this.unjournaled.push(b);
    }
    fresh.length = 0;
    this.journalWrite ??= new Promise<void>((resolve) =>
      queueMicrotask(() => {
        this.writeJournal();
        resolve();
      }),
    );
    return this.journalWrite;
  }

  private writeJournal(): void {
    this.journalWrite = undefined;
    if (!this.unjournaled.length) return;
    const blocks = this.unjournaled;
    this.unjournaled = [];
    this.guard(() => this.journal?.append(blocks));
  }

  /** Writes the marks into the era metadata and commits it. */
  commit(): void {
    if (this.failure) return;
    this.guard(() => {
      this.applyPending();
      if (!this.md.hasUncommittedChanges) return;
      this.md.commit();
      this.journal?.restart();
    });
  }

  get failed(): Error | undefined {
    return this.failure;
  }

  private guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.fail(e);
    }
  }

  // Without its journal the next open cannot tell what this run wrote, so it marks every block
  // (unlinking works where writes fail, e.g. on a full disk).
  private fail(e: unknown): void {
    if (this.failure) return;
    this.failure = e as Error;
    log.error('era tracking stopped', { error: this.failure.message });
    try {
      if (this.journalPath) fs.rmSync(this.journalPath, { force: true });
    } catch (unlink) {
      log.error('could not remove the era journal: the next open may trust incomplete marks', {
        error: (unlink as Error).message,
      });
    }
  }

  private checkHealthy(): void {
    if (this.failure) throw new EraFailedError(this.failure);
  }

  /**
   * Ends the current era and starts the next; returns the new era. In memory and one journal
   * record (replayed after a kill); the era metadata takes it at the next era commit.
   */
  checkpoint(): number {
    this.checkHealthy();
    try {
      this.applyPending();
      this.md.rollover();
      this.writeJournal(); // the era's marks before the record that ends it
      this.journal?.append([ROLLOVER]);
    } catch (e) {
      this.fail(e);
      this.checkHealthy();
    }
    const era = this.md.currentEra;
    this.marked.fill(0);
    this.markedCount = 0;
    return era;
  }

  private applyPending(): void {
    if (!this.pending.length) return;
    this.md.mark([...new Set(this.pending)].sort((a, b) => a - b));
    this.pending = [];
  }

  takeSnapshot(): { era: number; location: number } {
    this.commit();
    this.checkHealthy();
    const snap = this.md.takeSnapshot();
    this.marked.fill(0);
    this.markedCount = 0;
    this.journal?.restart();
    return snap;
  }

  dropSnapshot(): void {
    this.commit();
    this.checkHealthy();
    this.md.dropSnapshot();
    this.journal?.restart();
  }

  /** Bitmap of the data blocks written in era `since` or later (bit b of byte b >> 3). */
  writtenSince(since: number): Uint8Array {
    this.checkHealthy();
    const bits = this.md.writtenSince(since, 'live');
    if (this.md.currentEra >= since) for (let i = 0; i < bits.length; i++) bits[i] |= this.marked[i];
    return bits;
  }

  status(): EraStatus {
    const snap = this.md.snapshotSuperblock();
    return {
      currentEra: this.md.currentEra,
      nrBlocks: this.md.nrBlocks,
      markedThisEra: this.markedCount,
      ...(snap ? { snapshotEra: snap.currentEra - 1, metadataSnapBlock: this.md.sb.metadataSnap } : {}),
      ...(this.failure ? { failed: this.failure.message } : {}),
    };
  }

  close(): void {
    if (this.journal && this.failure) this.journal.close();
    else if (this.journal) {
      this.commit();
      this.md.sb.cleanShutdown = true;
      this.md.commit();
      this.journal.restart();
      this.journal.close();
    }
    this.md.close();
  }
}

/** Applies journal records to the metadata in order; returns how many there were. */
function replay(md: EraMetadata, records: number[]): number {
  let batch: number[] = [];
  const apply = () => {
    const known = batch.filter((b) => b < md.nrBlocks);
    if (known.length) md.mark([...new Set(known)].sort((a, b) => a - b));
    batch = [];
  };
  for (const r of records) {
    if (r !== ROLLOVER) batch.push(r);
    else {
      apply();
      md.rollover();
    }
  }
  apply();
  return records.length;
}
