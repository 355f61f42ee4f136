import { BlockManager } from '../block-manager';
import { nodeValidator, NodeView } from './node';

/** Reference counts recomputed by walking structures, compared later with a space map. */
export class RefTally {
  private readonly small: Uint16Array | undefined;
  private readonly big = new Map<number, number>();

  constructor(readonly nrBlocks: number) {
    this.small = nrBlocks <= 1 << 26 ? new Uint16Array(nrBlocks) : undefined;
  }

  add(block: number): void {
    if (this.small && block < this.nrBlocks && this.small[block] < 0xffff) {
      this.small[block]++;
      if (this.small[block] < 0xffff) return;
      this.big.set(block, 0xffff);
      return;
    }
    this.big.set(block, (this.big.get(block) ?? 0) + 1);
  }

  get(block: number): number {
    const big = this.big.get(block);
    if (big !== undefined) return big;
    return this.small && block < this.nrBlocks ? this.small[block] : 0;
  }

  /** Blocks with a non-zero tally that lie outside [0, nrBlocks). */
  outOfRange(): number[] {
    return [...this.big.keys()].filter((b) => b >= this.nrBlocks);
  }
}

interface NodeSummary {
  height: number;
  entries: number;
}

export interface TreeVisitor {
  /** Called once per distinct leaf with its entries (shared leaves are not repeated). */
  leaf?(node: NodeView, location: number): void;
}

/**
 * Walks B-trees checking every rule thin_check checks and a few it does not (equal leaf depth,
 * key ranges against the parent), tallying one metadata reference per pointer to a node. A node
 * reached again through another parent gains a reference but is not walked again.
 */
export class TreeChecker {
  private readonly summaries = new Map<number, NodeSummary | null>();

  constructor(
    private readonly bm: BlockManager,
    readonly metadataRefs: RefTally,
    readonly errors: string[],
  ) {}

  /** Checks the tree at `root` (one reference to it is tallied); returns its entry count. */
  check(root: number, leafValueSize: number, label: string, visitor: TreeVisitor = {}): number {
    return this.visit(root, leafValueSize, label, visitor, true, 0, Number.MAX_SAFE_INTEGER)?.entries ?? 0;
  }

  private visit(
    location: number,
    valueSize: number,
    label: string,
    visitor: TreeVisitor,
    isRoot: boolean,
    low: number,
    high: number,
  ): NodeSummary | null {
    this.metadataRefs.add(location);
    if (this.summaries.has(location)) return this.summaries.get(location)!;
    this.summaries.set(location, null);
    const error = (msg: string) => this.errors.push(`${label}: ${msg} (block ${location})`);
    let node: NodeView;
    try {
      node = new NodeView(this.bm.read(location, nodeValidator));
    } catch (e) {
      this.errors.push(`${label}: ${(e as Error).message}`);
      return null;
    }
    const n = node.nrEntries;
    const max = node.maxEntries;
    if (node.isLeaf && node.valueSize !== valueSize)
      error(`value size ${node.valueSize}, expected ${valueSize}`);
    if (max % 3 !== 0) error(`max entries ${max} not divisible by 3`);
    if (!isRoot && n < Math.floor(max / 3)) error(`too few entries: ${n} < ${Math.floor(max / 3)}`);
    if (!isRoot && n === 0) return null;
    for (let i = 0; i < n; i++) {
      const key = node.key(i);
      if (i > 0 && key <= node.key(i - 1)) error(`keys out of order at ${i}: ${node.key(i - 1)} then ${key}`);
      if (key < low || key >= high) error(`key ${key} outside the parent's range [${low}, ${high})`);
    }
    let summary: NodeSummary;
    if (node.isLeaf) {
      summary = { height: 0, entries: n };
      visitor.leaf?.(node, location);
    } else {
      let height = -1;
      let entries = 0;
      for (let i = 0; i < n; i++) {
        const childHigh = i + 1 < n ? node.key(i + 1) : high;
        const child = this.visit(node.child(i), valueSize, label, visitor, false, node.key(i), childHigh);
        if (!child) continue;
        if (height >= 0 && child.height !== height)
          error(`children at different depths (${height} and ${child.height})`);
        height = Math.max(height, child.height);
        entries += child.entries;
      }
      summary = { height: height + 1, entries };
    }
    this.summaries.set(location, summary);
    return summary;
  }
}
