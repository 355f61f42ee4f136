import { PersistentArray } from '../../pdata/array';
import { PersistentBitset } from '../../pdata/bitset';
import { BlockManager } from '../../pdata/block-manager';
import { BTree } from '../../pdata/btree/btree';
import { MAX_METADATA_BLOCKS, MetadataSpaceMap } from '../../pdata/space-map/metadata-space-map';
import { TransactionManager } from '../../pdata/transaction-manager';
import { MetadataInvariantError } from '../../pdata/errors';
import {
  EraSuperblock,
  WRITESET_VALUE_SIZE,
  Writeset,
  decodeEraSuperblock,
  decodeWriteset,
  encodeEraSuperblock,
  encodeWriteset,
  eraSuperblockValidator,
} from './era-superblock';

// dm-era's metadata: for each data block, the era in which it was last written. The current era's
// writes are a bitset (the current writeset); a rollover archives it in the writeset tree under its
// era and starts the next era. Archived writesets are digested into the era array (one u32 per
// block), all but the newest: the tools read the era array only when the tree is not empty.
const SUPERBLOCK_LOCATION = 0;
const SUPERBLOCK_ONLY: ReadonlySet<number> = new Set([SUPERBLOCK_LOCATION]);
/** dm-era's own bound (the bitset's bit numbers are 31-bit). */
export const MAX_ERA_BLOCKS = 2 ** 31 - 1;

export interface EraFormatOptions {
  nrBlocks: number;
  dataBlockSectors: number;
}

/** Metadata bytes enough for the era array twice over (a held snapshot), two writesets and maps. */
export function eraMetadataBytes(nrBlocks: number): number {
  const bytes = 2 * 1024 * 1024 + nrBlocks * 10;
  return Math.ceil(bytes / 2 ** 20) * 2 ** 20;
}

export class EraMetadata {
  private readonly bitsets: PersistentBitset;
  private readonly eras: PersistentArray;
  private readonly writesets: BTree;

  private constructor(
    readonly bm: BlockManager,
    readonly tm: TransactionManager,
    private readonly sm: MetadataSpaceMap,
    readonly sb: EraSuperblock,
  ) {
    this.bitsets = new PersistentBitset(tm);
    this.eras = new PersistentArray(tm, 4);
    this.writesets = new BTree(tm, {
      size: WRITESET_VALUE_SIZE,
      inc: (v) => tm.inc(decodeWriteset(v).root),
      dec: (v) => this.bitsets.del(decodeWriteset(v).root),
      equal: (a, b) => a.equals(b),
    });
  }

  /** Fresh metadata over whatever `path` held: era 1, nothing written yet. */
  static format(path: string, options: EraFormatOptions): EraMetadata {
    if (!Number.isInteger(options.nrBlocks) || options.nrBlocks < 1 || options.nrBlocks > MAX_ERA_BLOCKS)
      throw new RangeError(`era tracking covers 1…${MAX_ERA_BLOCKS} blocks, not ${options.nrBlocks}`);
    const bm = new BlockManager(path);
    const { sm, tm } = MetadataSpaceMap.create(bm, Math.min(bm.nrBlocks, MAX_METADATA_BLOCKS));
    const sb: EraSuperblock = {
      cleanShutdown: false,
      metadataSpaceMap: sm.root(),
      dataBlockSectors: options.dataBlockSectors,
      nrBlocks: options.nrBlocks,
      currentEra: 0,
      currentWriteset: { nrBits: 0, root: 0 },
      writesetTreeRoot: 0,
      eraArrayRoot: 0,
      metadataSnap: 0,
    };
    const md = new EraMetadata(bm, tm, sm, sb);
    sb.writesetTreeRoot = md.writesets.create();
    sb.eraArrayRoot = md.eras.create(options.nrBlocks, Buffer.alloc(4));
    md.rollover();
    md.commit();
    return md;
  }

  static open(path: string, options: { readOnly?: boolean } = {}): EraMetadata {
    const bm = new BlockManager(path, options);
    try {
      const sb = decodeEraSuperblock(bm.read(SUPERBLOCK_LOCATION, eraSuperblockValidator));
      const { sm, tm } = MetadataSpaceMap.open(bm, sb.metadataSpaceMap);
      return new EraMetadata(bm, tm, sm, sb);
    } catch (e) {
      bm.close();
      throw e;
    }
  }

  get currentEra(): number {
    return this.sb.currentEra;
  }

  get nrBlocks(): number {
    return this.sb.nrBlocks;
  }

  get hasUncommittedChanges(): boolean {
    return this.tm.changedBlocks > 0 || this.sm.counts.changed;
  }

  /** Marks the ascending, distinct `blocks` as written in the current era. */
  mark(blocks: readonly number[]): void {
    if (blocks.length === 0) return;
    const last = blocks[blocks.length - 1];
    if (last >= this.sb.nrBlocks)
      throw new MetadataInvariantError(`block ${last} is beyond the era's ${this.sb.nrBlocks}`);
    const ws = this.sb.currentWriteset;
    ws.root = this.bitsets.set(ws.root, blocks);
  }

  /** Covers `nrBlocks` data blocks from now on (a grown pool); the new blocks were never written. */
  grow(nrBlocks: number): void {
    const old = this.sb.nrBlocks;
    if (nrBlocks === old) return;
    if (nrBlocks < old || nrBlocks > MAX_ERA_BLOCKS)
      throw new RangeError(`era tracking of ${old} blocks cannot change to ${nrBlocks}`);
    this.sb.eraArrayRoot = this.eras.grow(this.sb.eraArrayRoot, old, nrBlocks, Buffer.alloc(4));
    const ws = this.sb.currentWriteset;
    if (ws.root)
      this.sb.currentWriteset = { nrBits: nrBlocks, root: this.bitsets.grow(ws.root, old, nrBlocks) };
    this.sb.nrBlocks = nrBlocks;
  }

  /**
   * Archives the current writeset and starts the next era (dm-era's checkpoint), or era `to`
   * when that is later (eras skipped hold no writes).
   */
  rollover(to = 0): number {
    const ws = this.sb.currentWriteset;
    if (ws.root !== 0) {
      this.sb.writesetTreeRoot = this.writesets.insert(
        this.sb.writesetTreeRoot,
        this.sb.currentEra,
        encodeWriteset(ws),
      );
      this.digest();
    }
    this.sb.currentEra = Math.max(to, this.sb.currentEra + 1);
    this.sb.currentWriteset = { nrBits: this.sb.nrBlocks, root: this.bitsets.create(this.sb.nrBlocks) };
    return this.sb.currentEra;
  }

  // Folds every archived writeset but the newest into the era array, oldest first.
  private digest(): void {
    const archived = [...this.writesets.entries(this.sb.writesetTreeRoot)].map(
      ([era, v]) => [era, decodeWriteset(v)] as const,
    );
    for (const [era, ws] of archived.slice(0, -1)) {
      const blocks: number[] = [];
      this.bitsets.forEachSet(ws.root, Math.min(ws.nrBits, this.sb.nrBlocks), (b) => blocks.push(b));
      this.sb.eraArrayRoot = this.eras.update(this.sb.eraArrayRoot, blocks, (data, offset) =>
        data.writeUInt32LE(era, offset),
      );
      this.sb.writesetTreeRoot = this.writesets.remove(this.sb.writesetTreeRoot, era).root;
    }
  }

  /**
   * Freezes the era data for a reader (dm-era's take_metadata_snap): a rollover, so the snapshot
   * holds every write up to now, then a copy of the superblock whose trees gain a reference.
   */
  takeSnapshot(): { location: number; era: number } {
    if (this.sb.metadataSnap)
      throw new EraSnapshotError(`an era metadata snapshot is already held at block ${this.sb.metadataSnap}`);
    this.rollover();
    this.commit();
    const { location, data } = this.tm.newBlock(eraSuperblockValidator, 'the era metadata snapshot');
    const zeroRoot = { nrBlocks: 0, nrAllocated: 0, bitmapRoot: 0, refCountRoot: 0 };
    encodeEraSuperblock(
      { ...this.sb, metadataSpaceMap: zeroRoot, currentWriteset: { nrBits: 0, root: 0 }, metadataSnap: 0 },
      data,
    );
    this.tm.inc(this.sb.writesetTreeRoot);
    this.tm.inc(this.sb.eraArrayRoot);
    this.sb.metadataSnap = location;
    this.commit();
    return { location, era: this.sb.currentEra - 1 };
  }

  dropSnapshot(): void {
    const held = this.sb.metadataSnap;
    if (!held) throw new EraSnapshotError('no era metadata snapshot is held');
    const snap = this.snapshotSuperblock()!;
    this.sb.metadataSnap = 0;
    this.writesets.del(snap.writesetTreeRoot);
    this.eras.del(snap.eraArrayRoot);
    this.tm.dec(held);
    this.commit();
  }

  snapshotSuperblock(): EraSuperblock | undefined {
    const held = this.sb.metadataSnap;
    return held ? decodeEraSuperblock(this.bm.read(held, eraSuperblockValidator)) : undefined;
  }

  /**
   * The blocks written in era `since` or later, as a bitmap (bit b of byte b>>3), from the live
   * metadata (including the current writeset) or from the held snapshot.
   */
  writtenSince(since: number, from: 'live' | 'snapshot' = 'live'): Uint8Array {
    const sb = from === 'live' ? this.sb : this.snapshotSuperblock();
    if (!sb) throw new EraSnapshotError('no era metadata snapshot is held');
    const bits = new Uint8Array(Math.ceil(sb.nrBlocks / 8));
    const set = (b: number) => (bits[b >> 3] |= 1 << (b & 7));
    const per = this.eras.perBlock;
    for (const { blockIndex, data, nrEntries } of this.eras.blocks(sb.eraArrayRoot)) {
      for (let i = 0; i < nrEntries; i++)
        if (data.readUInt32LE(24 + i * 4) >= since) set(blockIndex * per + i);
    }
    const sets: Writeset[] = [];
    for (const [era, v] of this.writesets.entries(sb.writesetTreeRoot))
      if (era >= since) sets.push(decodeWriteset(v));
    if (from === 'live' && sb.currentEra >= since && sb.currentWriteset.root) sets.push(sb.currentWriteset);
    for (const ws of sets) this.bitsets.forEachSet(ws.root, Math.min(ws.nrBits, sb.nrBlocks), set);
    return bits;
  }

  commit(): void {
    this.sm.commit(this.tm);
    this.sb.metadataSpaceMap = this.sm.root();
    this.bm.flush(SUPERBLOCK_ONLY);
    this.bm.writeNow(SUPERBLOCK_LOCATION, encodeEraSuperblock(this.sb), eraSuperblockValidator);
    this.sm.committed();
    this.tm.beginTransaction();
  }

  close(): void {
    this.bm.close();
  }
}

export class EraSnapshotError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EraSnapshotError';
  }
}
