// One device's mappings as its I/O path sees them: lookups, runs of consecutive data blocks,
// changes, and the one rule that says whether a block is this device's alone (dm-thin's: a
// mapping made before the device's last snapshot may be shared and must be copied on write).
import { DeviceRangeError } from './errors';
import { Mapping, decodeMapping } from './mapping';
import { ThinMetadata } from './metadata';

export class MappingView {
  private snapshottedTime = 0;

  constructor(
    /** The pool's current metadata (it is swapped when the pool fails). */
    private readonly md: () => ThinMetadata,
    readonly id: number,
  ) {
    this.refresh();
  }

  /** Called by the pool when a snapshot of (or as) this device was taken. */
  refresh(): void {
    const details = this.md().deviceDetails(this.id);
    if (!details) throw new DeviceRangeError(`thin device ${this.id} does not exist`);
    this.snapshottedTime = details.snapshottedTime;
  }

  lookup(vblock: number): Mapping | undefined {
    return this.md().lookupMapping(this.id, vblock);
  }

  /** True when a write may go to the mapped block in place (no snapshot shares it). */
  owns(m: Mapping): boolean {
    return m.time >= this.snapshottedTime;
  }

  /** The first data block of `count` mapped blocks from `first` laid out consecutively. */
  mappedRun(first: number, count: number): number | undefined {
    return this.md().consecutiveRun(this.id, first, count, 0);
  }

  /** As `mappedRun`, but only when every block of the run is this device's alone. */
  ownedRun(first: number, count: number): number | undefined {
    return this.md().consecutiveRun(this.id, first, count, this.snapshottedTime);
  }

  /** Mapped virtual blocks in [first, end), in order. */
  *entries(first: number, end: number): Generator<[number, Mapping]> {
    const md = this.md();
    const root = md.deviceRoot(this.id);
    if (root === undefined) return;
    for (const [vblock, value] of md.mappings.entries(root, first, end)) yield [vblock, decodeMapping(value)];
  }

  /** Maps `vblock` to a freshly allocated `dataBlock` (the tree takes its reference). */
  map(vblock: number, dataBlock: number): void {
    this.md().insertMapping(this.id, vblock, dataBlock);
  }

  unmap(vblock: number): void {
    this.md().removeMapping(this.id, vblock);
  }
}
