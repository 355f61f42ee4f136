import { BlockManager } from './block-manager';
import { BlockValidator } from './block-validator';
import { MetadataInvariantError, MetadataReadOnlyError, NoMetadataSpaceError } from './errors';
import { RefCounts } from './space-map/ref-counts';

export interface Shadow {
  location: number;
  data: Buffer;
  /** The original was shared: the copy's children must each gain a reference. */
  incChildren: boolean;
}

/**
 * Copy-on-write over the block manager. A block written in this transaction is copied first
 * unless it was itself created in this transaction and nothing else shares it, so the last
 * committed state stays intact on disk until the superblock moves on.
 */
export class TransactionManager {
  private shadowed = new Set<number>();

  constructor(
    readonly bm: BlockManager,
    /** Reference counts of metadata blocks (the metadata space map's in-memory state). */
    readonly metadataCounts: RefCounts,
  ) {}

  read(location: number, validator: BlockValidator): Buffer {
    return this.bm.read(location, validator);
  }

  newBlock(validator: BlockValidator, what = 'a metadata block'): { location: number; data: Buffer } {
    if (this.bm.readOnly) throw new MetadataReadOnlyError(this.bm.path, `allocate ${what}`);
    const location = this.metadataCounts.allocate();
    if (location === undefined) throw new NoMetadataSpaceError(what);
    this.shadowed.add(location);
    return { location, data: this.bm.zeroed(location, validator) };
  }

  shadow(location: number, validator: BlockValidator): Shadow {
    if (this.bm.readOnly) throw new MetadataReadOnlyError(this.bm.path, `change block ${location}`);
    const count = this.metadataCounts.count(location);
    if (this.shadowed.has(location) && count === 1) {
      return { location, data: this.bm.writable(location, validator), incChildren: false };
    }
    const original = this.bm.read(location, validator);
    const copy = this.newBlock(validator, 'a shadow copy');
    original.copy(copy.data);
    this.metadataCounts.dec(location);
    return { location: copy.location, data: copy.data, incChildren: count > 1 };
  }

  /** A block this transaction already shadowed, to change again (no copy, no count change). */
  writableShadow(location: number, validator: BlockValidator): Buffer {
    if (!this.shadowed.has(location))
      throw new MetadataInvariantError(`block ${location} was not shadowed in this transaction`);
    return this.bm.writable(location, validator);
  }

  inc(location: number): void {
    this.metadataCounts.inc(location);
  }

  dec(location: number): void {
    this.metadataCounts.dec(location);
  }

  count(location: number): number {
    return this.metadataCounts.count(location);
  }

  /** Blocks created or copied in this transaction (non-zero means there is something to commit). */
  get changedBlocks(): number {
    return this.shadowed.size;
  }

  /** After a commit: every block on disk now belongs to the committed state. */
  beginTransaction(): void {
    this.shadowed.clear();
  }
}
