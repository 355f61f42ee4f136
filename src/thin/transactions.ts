// When and how the pool's changes become durable: data first, then metadata, superblock last;
// the periodic commit; the mapping journal; and the read-only fallback when a write, a sync or
// the metadata space fails (dm-thin's abort_metadata).
import { logger } from '../log';
import { NoMetadataSpaceError } from '../pdata/errors';
import { DataFile } from './data-file';
import { PoolError, PoolReadOnlyError } from './errors';
import { IoGate } from './io-gate';
import { MappingJournal } from './mapping-journal';
import { ThinMetadata } from './metadata';
import { NEEDS_CHECK_FLAG } from './superblock';

const log = logger('pool');

export interface TransactionOptions {
  readOnly?: boolean;
  /** Commit at least this often while there are changes (0 = only on flush). */
  commitIntervalMs: number;
  /** Runs inside the periodic commit's exclusive section, after it (catalogue settling). */
  afterPeriodicCommit(): void;
  /** The metadata was replaced by its last commit: views of it must look again. */
  metadataReplaced(): void;
}

export class Transactions {
  private current: ThinMetadata;
  private timer: NodeJS.Timeout | undefined;
  /** A data sync running outside the exclusive section (see `periodicCommit`). */
  private earlySync: Promise<void> | undefined;
  private commits = 0;
  private readOnlyReason: string | undefined;
  // Set when the pool turned read-only because something failed (not when opened read-only):
  // writes acknowledged since the last commit are gone, so no flush may succeed any more.
  private failure: { reason: string; errno: 'EIO' | 'ENOSPC' } | undefined;
  /** The in-memory metadata was given up for the last commit (see `dropUncommitted`). */
  private dropped = false;
  private journal: MappingJournal | undefined;
  /** A commit waiting for its exclusive section (see `commit`). */
  private queuedCommit: Promise<void> | undefined;

  constructor(
    private readonly paths: { metadata: string; journal: string },
    md: ThinMetadata,
    private readonly data: DataFile,
    private readonly gate: IoGate,
    private readonly options: TransactionOptions,
  ) {
    this.current = md;
    if (options.readOnly) this.readOnlyReason = 'opened read-only';
    if (md.sb.flags & NEEDS_CHECK_FLAG)
      this.readOnlyReason = 'the metadata needs checking (needs_check is set)';
  }

  /** The pool's metadata as of now (replaced by its last commit when the pool fails). */
  get md(): ThinMetadata {
    return this.current;
  }

  get readOnlyBecause(): string | undefined {
    return this.readOnlyReason;
  }

  /** Commits that wrote a new superblock since the pool was opened. */
  get commitCount(): number {
    return this.commits;
  }

  checkWritable(): void {
    if (this.readOnlyReason) throw new PoolReadOnlyError(this.readOnlyReason);
  }

  /** Replays the journal, then commits periodically (read-write pools). */
  async start(): Promise<void> {
    if (this.readOnlyReason) return;
    await this.startJournal();
    if (this.options.commitIntervalMs > 0) {
      this.timer = setInterval(() => void this.periodicCommit(), this.options.commitIntervalMs);
      this.timer.unref();
    }
  }

  // Replays what a killed predecessor acknowledged without committing (its data is in the page
  // cache), commits it, then journals this process's own changes.
  private async startJournal(): Promise<void> {
    const journal = MappingJournal.open(this.paths.journal);
    if (!journal) {
      log.warn('no boot id: writes acknowledged but not yet flushed are lost if this process is killed');
      return;
    }
    try {
      const replay = journal.replay(this.md);
      if (replay.note) log.warn('mapping journal', { note: replay.note });
      if (replay.applied > 0) {
        this.data.assumeUnsynced();
        await this.data.sync();
        this.guardMetadata(() => this.md.commit());
        this.commits++;
        log.info('replayed mapping changes acknowledged before the last stop', { records: replay.applied });
      }
      journal.committed(this.md.sb);
    } catch (e) {
      journal.close();
      throw new PoolError(
        `replaying ${this.paths.journal} failed (${(e as Error).message}); moving it aside ` +
          'opens the pool without the writes it holds',
        'EIO',
      );
    }
    this.journal = journal;
    this.md.listener = journal;
  }

  /**
   * Makes everything acknowledged so far durable. Flushes are cheap when they can be: with
   * nothing unsynced or uncommitted no I/O is held back, and a flush that finds a commit queued
   * but not yet started joins it (that commit covers every write finished before it starts).
   */
  commit(): Promise<void> {
    if (this.failure) return Promise.reject(this.failedError());
    if (!this.md.hasUncommittedChanges && !this.data.hasUnsyncedWrites) return Promise.resolve();
    if (this.queuedCommit) return this.queuedCommit;
    const queued = this.gate.exclusive(() => {
      this.queuedCommit = undefined;
      return this.commitNow();
    });
    this.queuedCommit = queued;
    return queued;
  }

  /**
   * Inside the gate's exclusive section. `dataOnlyIfMapped`: sync the data file only when there
   * is metadata to commit. The periodic commit uses it: new mappings must not reach the disk
   * before the data they point at, but overwrites of mapped blocks change no metadata, and
   * their durability is the client's flush (dm-thin's periodic commit does the same). Syncing
   * them every second held all I/O back while a second's dirty pages went to disk.
   */
  async commitNow(dataOnlyIfMapped = false): Promise<void> {
    await this.earlySyncDone();
    if (this.failure) throw this.failedError();
    const metadataChanged = this.md.hasUncommittedChanges;
    if (this.readOnlyReason) return;
    if (!metadataChanged && (!this.data.hasUnsyncedWrites || dataOnlyIfMapped)) return;
    await this.syncData();
    if (metadataChanged) this.commitMetadata();
  }

  /** A metadata change run alone (inside the exclusive section), committed at once. */
  async metadataChange<T>(fn: () => T): Promise<T> {
    this.checkWritable();
    // The commit also carries the mappings of writes made since the last one: their data first.
    await this.syncData();
    return this.guardMetadata(() => {
      const result = fn();
      this.commitMetadata();
      return result;
    });
  }

  /** Running out of metadata space turns the pool read-only with needs_check set. */
  failMetadata(cause: Error): never {
    log.error('metadata space exhausted: pool switched to read-only with needs_check set', {
      error: cause.message,
    });
    this.readOnlyReason =
      'out of metadata space (needs_check is set; run thinpool pool check, then grow the metadata)';
    this.failure ??= { reason: this.readOnlyReason, errno: 'EIO' };
    this.stopTimer();
    this.dropUncommitted(true);
    throw new PoolReadOnlyError(this.readOnlyReason);
  }

  /** Commits what is left (read-write pools) and stops the timer and the journal. */
  async close(): Promise<void> {
    this.stopTimer();
    if (!this.readOnlyReason) await this.commit();
    this.journal?.close();
    this.md.close();
  }

  private async periodicCommit(): Promise<void> {
    // Nothing to commit: do not hold I/O back just to find that out.
    if (this.readOnlyReason || !this.md.hasUncommittedChanges || this.earlySync) return;
    try {
      // Most dirty data goes to disk while I/O goes on, so the sync the commit needs inside its
      // exclusive section (where writers wait) has only what was written meanwhile left to do.
      if (this.data.hasUnsyncedWrites) {
        // A failure fails the pool before anything else can run: a flush that came after it
        // would sync again and be told of no error, the kernel having reported it here.
        this.earlySync = this.data.sync().catch((e: unknown) => {
          throw this.failIo(e, 'data');
        });
        try {
          await this.earlySync;
        } finally {
          this.earlySync = undefined;
        }
      }
      await this.gate.exclusive(async () => {
        await this.commitNow(true);
        this.options.afterPeriodicCommit();
      });
    } catch (e) {
      log.error('periodic commit failed', { error: (e as Error).message });
      if (this.failure && !this.dropped) await this.gate.exclusive(async () => this.dropUncommitted(false));
    }
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
    this.commits++;
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
    try {
      await this.data.sync();
    } catch (e) {
      const error = this.failIo(e, 'data');
      this.dropUncommitted(false);
      throw error;
    }
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
      this.stopTimer();
      log.error('pool switched to read-only: a write or sync failed', { file, error: message });
    }
    return this.failedError();
  }

  private failedError(): PoolReadOnlyError {
    return new PoolReadOnlyError(this.failure!.reason, this.failure!.errno);
  }

  /**
   * Gives up the in-memory metadata for the last commit, read-only: it may be half-changed, or
   * map data that never reached the disk. `needsCheck` also flags the committed superblock,
   * best effort (a failing device may refuse that write too). After a data failure the journal
   * restarts on the last commit: its records map data that may be lost. Runs where no I/O is in
   * flight (inside the gate's exclusive section).
   */
  private dropUncommitted(needsCheck: boolean): void {
    if (this.dropped) return;
    this.dropped = true;
    this.md.close();
    if (needsCheck) {
      try {
        ThinMetadata.markNeedsCheck(this.paths.metadata);
      } catch (e) {
        log.error('could not set needs_check in the metadata superblock', { error: (e as Error).message });
      }
    }
    this.current = ThinMetadata.open(this.paths.metadata, { readOnly: true });
    if (!needsCheck) this.journal?.committed(this.md.sb);
    this.options.metadataReplaced();
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

  private stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
