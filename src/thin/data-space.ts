// Data blocks for new mappings: allocation with a metadata reserve, the low-water warning, and
// writers that wait for the pool to grow when it is full (the `queue` no-space policy).
import { logger } from '../log';
import { NoDataSpaceError, NoMetadataSpaceError } from '../pdata/errors';
import { OutOfDataSpaceError } from './errors';
import { ThinMetadata } from './metadata';

const log = logger('pool');

/** Metadata blocks kept back for commits, so a full metadata device can still commit. */
const METADATA_RESERVE_BLOCKS = 64;

export type NoSpacePolicy = 'error' | 'queue';

export interface DataSpaceOptions {
  noSpacePolicy?: NoSpacePolicy;
  noSpaceTimeoutMs?: number;
  lowWaterBlocks?: number;
}

export interface DataSpaceEvents {
  /** Free blocks dropped below the low-water mark (once until the pool grows). */
  lowWater(freeBlocks: number): void;
  /** A writer started waiting for space. */
  outOfSpace(): void;
  /** Freed blocks become allocatable once committed. */
  commit(): Promise<void>;
  /** The metadata reserve is reached: the pool cannot take another mapping. */
  metadataFull(cause: NoMetadataSpaceError): never;
}

export class DataSpace {
  private lowWaterRaised = false;
  private waiters: (() => void)[] = [];

  constructor(
    /** The current metadata (the pool swaps it when it fails). */
    private readonly md: () => ThinMetadata,
    private readonly options: DataSpaceOptions,
    private readonly events: DataSpaceEvents,
  ) {}

  private get counts() {
    return this.md().dataSm.counts;
  }

  /** A data block with one reference; throws NoDataSpaceError when none is free now. */
  allocate(): number {
    if (this.md().metadataSm.counts.nrAllocatable < METADATA_RESERVE_BLOCKS)
      this.events.metadataFull(new NoMetadataSpaceError('a data mapping (metadata reserve reached)'));
    const counts = this.counts;
    const block = counts.allocate();
    if (block === undefined) throw new NoDataSpaceError();
    const low = this.options.lowWaterBlocks;
    const free = counts.nrFree;
    if (low !== undefined && !this.lowWaterRaised && free < low) {
      this.lowWaterRaised = true;
      log.warn('data space below the low-water mark', { freeBlocks: free, lowWaterBlocks: low });
      setImmediate(() => this.events.lowWater(free));
    }
    return block;
  }

  /** Gives back a block allocated for a write that failed. */
  release(dataBlock: number): void {
    this.counts.dec(dataBlock);
  }

  /** The data space map grew to `nrBlocks` (if larger): waiting writers try again. */
  grow(nrBlocks: number): void {
    if (nrBlocks > this.counts.nrBlocks) this.md().dataSm.extend(nrBlocks);
    this.lowWaterRaised = false;
    for (const wake of this.waiters.splice(0)) wake();
  }

  /** After a failed allocation: commit to free pending blocks; then fail or wait per policy. */
  async waitForSpace(): Promise<void> {
    const counts = this.counts;
    if (counts.nrAllocatable === 0 && counts.nrFree > 0) {
      await this.events.commit();
      return;
    }
    if (counts.nrAllocatable > 0) return;
    if ((this.options.noSpacePolicy ?? 'error') === 'error') throw new OutOfDataSpaceError();
    const timeoutMs = this.options.noSpaceTimeoutMs ?? 60_000;
    log.warn('out of data space: queueing writes until the pool grows', { timeoutMs });
    this.events.outOfSpace();
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== wake);
        reject(new OutOfDataSpaceError(`no space after waiting ${timeoutMs} ms`));
      }, timeoutMs);
      const wake = () => {
        clearTimeout(timer);
        resolve();
      };
      this.waiters.push(wake);
    });
  }
}
