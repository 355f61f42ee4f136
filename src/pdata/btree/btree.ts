import { TransactionManager } from '../transaction-manager';
import { MetadataInvariantError } from '../errors';
import { INTERNAL_NODE, LEAF_NODE, NodeView, nodeValidator, u64Value as u64 } from './node';
import { ValueType } from './value-type';

interface Writable {
  location: number;
  node: NodeView;
}

/**
 * A copy-on-write B+tree of u64 keys, as dm-persistent-data lays it out. Every change takes the
 * current root and returns the new one; nodes on the path are shadowed, so the committed tree
 * stays readable until the caller commits. Leaves are all at one depth and non-root nodes hold
 * at least max_entries/3 entries.
 */
export class BTree {
  constructor(
    readonly tm: TransactionManager,
    readonly valueType: ValueType,
  ) {}

  /** A new tree: one empty leaf. */
  create(): number {
    const { location, data } = this.tm.newBlock(nodeValidator, 'a btree root');
    NodeView.format(data, LEAF_NODE, this.valueType.size);
    return location;
  }

  node(location: number): NodeView {
    return new NodeView(this.tm.read(location, nodeValidator));
  }

  /** A copy of the value stored under `key`, or undefined. */
  lookup(root: number, key: number): Buffer | undefined {
    return this.lookupWith(root, key, (node, offset) =>
      Buffer.from(node.subarray(offset, offset + this.valueType.size)),
    );
  }

  /**
   * The value under `key` decoded straight from its leaf (the node's bytes and the value's
   * offset in them), or undefined: no copy, for lookups on the I/O path.
   */
  lookupWith<T>(root: number, key: number, decode: (node: Buffer, offset: number) => T): T | undefined {
    let node = this.node(root);
    for (;;) {
      const i = node.lowerBound(key);
      if (i < 0) return undefined;
      if (node.isLeaf) return node.key(i) === key ? decode(node.data, node.valueOffset(i)) : undefined;
      node = this.node(node.child(i));
    }
  }

  /** Inserts or overwrites; an overwritten value loses its reference unless equal to the new one. */
  insert(root: number, key: number, value: Buffer): number {
    return this.insertReporting(root, key, value).root;
  }

  /** As `insert`, telling whether the key was new. */
  insertReporting(root: number, key: number, value: Buffer): { root: number; inserted: boolean } {
    const vt = this.valueType;
    let inserted = false;
    const newRoot = this.upsert(root, key, (leaf, i, exists) => {
      if (!exists) {
        leaf.insertAt(i, key, value);
        inserted = true;
        return;
      }
      const old = leaf.value(i);
      if (vt.dec && !(vt.equal ? vt.equal(old, value) : old.equals(value))) vt.dec(Buffer.from(old));
      leaf.setValue(i, value);
    });
    return { root: newRoot, inserted };
  }

  /**
   * Replaces the value under `key` with `make(old)` without dropping the old value's reference:
   * for nested trees, where `make` has already shadowed the subtree the old value pointed to.
   */
  update(root: number, key: number, make: (old: Buffer | undefined) => Buffer): number {
    return this.upsert(root, key, (leaf, i, exists) => {
      if (exists) leaf.setValue(i, make(Buffer.from(leaf.value(i))));
      else leaf.insertAt(i, key, make(undefined));
    });
  }

  /** Removes `key` if present (its value loses its reference). */
  remove(root: number, key: number): { root: number; removed: boolean } {
    if (this.lookup(root, key) === undefined) return { root, removed: false };
    const top = this.shadowNode(root);
    let cur = top.node;
    while (!cur.isLeaf) {
      let i = cur.lowerBound(key);
      const child = this.shadowNode(cur.child(i));
      cur.setChild(i, child.location);
      let next = child.node;
      if (next.nrEntries <= next.minEntries && cur.nrEntries > 1) {
        i = this.rebalance(cur, i, key);
        next = new NodeView(this.tm.writableShadow(cur.child(i), nodeValidator));
      }
      cur = next;
    }
    const i = cur.lowerBound(key);
    if (i < 0 || cur.key(i) !== key) throw new MetadataInvariantError(`key ${key} vanished during remove`);
    this.valueType.dec?.(Buffer.from(cur.value(i)));
    cur.removeAt(i);
    return { root: this.collapseRoot(top.location), removed: true };
  }

  /** Drops one reference to the tree; nodes no longer referenced are freed with their values. */
  del(root: number): void {
    const stack = [root];
    while (stack.length) {
      const location = stack.pop()!;
      const shared = this.tm.count(location) > 1;
      const node = shared ? undefined : this.node(location);
      this.tm.dec(location);
      if (!node) continue;
      const n = node.nrEntries;
      if (!node.isLeaf) {
        for (let i = 0; i < n; i++) stack.push(node.child(i));
      } else if (this.valueType.dec) {
        for (let i = 0; i < n; i++) this.valueType.dec(Buffer.from(node.value(i)));
      }
    }
  }

  /** Entries with from ≤ key < to, in key order. The value buffers are views: copy to keep them. */
  *entries(root: number, from = 0, to = Number.MAX_SAFE_INTEGER): Generator<[number, Buffer]> {
    const path: { node: NodeView; index: number }[] = [];
    let node = this.node(root);
    for (;;) {
      const i = Math.max(0, node.lowerBound(from));
      path.push({ node, index: i });
      if (node.isLeaf) break;
      if (node.nrEntries === 0) return;
      node = this.node(node.child(i));
    }
    while (path.length) {
      const top = path[path.length - 1];
      if (top.index >= top.node.nrEntries) {
        path.pop();
        if (path.length) path[path.length - 1].index++;
        continue;
      }
      if (top.node.isLeaf) {
        const key = top.node.key(top.index);
        if (key >= to) return;
        if (key >= from) yield [key, top.node.value(top.index)];
        top.index++;
      } else {
        if (top.node.key(top.index) >= to) return;
        path.push({ node: this.node(top.node.child(top.index)), index: 0 });
      }
    }
  }

  /**
   * Reads (and so validates) every node under `root` once; `seen` lets shared subtrees of
   * several trees be read once. Leaves are handed to `leaf`.
   */
  visitNodes(root: number, seen: Set<number>, leaf?: (node: NodeView) => void): void {
    const stack = [root];
    while (stack.length) {
      const location = stack.pop()!;
      if (seen.has(location)) continue;
      seen.add(location);
      const node = this.node(location);
      if (node.isLeaf) leaf?.(node);
      else for (let i = 0; i < node.nrEntries; i++) stack.push(node.child(i));
    }
  }

  /** The largest key in the tree, or undefined when it is empty: one walk down its right edge. */
  lastKey(root: number): number | undefined {
    let node = this.node(root);
    for (;;) {
      if (node.nrEntries === 0) return undefined;
      if (node.isLeaf) return node.key(node.nrEntries - 1);
      node = this.node(node.child(node.nrEntries - 1));
    }
  }

  /** Number of entries (walks the leaves). */
  count(root: number): number {
    let n = 0;
    const stack = [root];
    while (stack.length) {
      const node = this.node(stack.pop()!);
      if (node.isLeaf) n += node.nrEntries;
      else for (let i = 0; i < node.nrEntries; i++) stack.push(node.child(i));
    }
    return n;
  }

  // Walks down to the leaf for `key`, splitting full nodes on the way so the leaf has room.
  private upsert(
    root: number,
    key: number,
    write: (leaf: NodeView, index: number, exists: boolean) => void,
  ): number {
    let top = this.shadowNode(root);
    if (top.node.nrEntries === top.node.maxEntries) {
      const grown = this.tm.newBlock(nodeValidator, 'a btree root');
      const parent = NodeView.format(grown.data, INTERNAL_NODE, 8);
      parent.insertAt(0, top.node.key(0), u64(top.location));
      this.splitChild(parent, 0, top.node);
      top = { location: grown.location, node: parent };
    }
    let cur = top.node;
    while (!cur.isLeaf) {
      let i = cur.lowerBound(key);
      if (i < 0) {
        i = 0;
        cur.setKey(0, key);
      }
      const child = this.shadowNode(cur.child(i));
      cur.setChild(i, child.location);
      let next = child.node;
      if (next.nrEntries === next.maxEntries) {
        const right = this.splitChild(cur, i, next);
        if (key >= cur.key(i + 1)) next = right;
      }
      cur = next;
    }
    const i = cur.lowerBound(key);
    if (i >= 0 && cur.key(i) === key) write(cur, i, true);
    else write(cur, i + 1, false);
    return top.location;
  }

  // Moves the upper half of a full child into a new right sibling, entered in the parent at i+1.
  private splitChild(parent: NodeView, i: number, child: NodeView): NodeView {
    const fresh = this.tm.newBlock(nodeValidator, 'a btree node');
    const right = NodeView.format(fresh.data, child.isLeaf ? LEAF_NODE : INTERNAL_NODE, child.valueSize);
    const keep = child.nrEntries >> 1;
    right.appendFrom(child, keep, child.nrEntries - keep);
    child.truncate(keep);
    parent.insertAt(i + 1, right.key(0), u64(fresh.location));
    return right;
  }

  // Child i may underflow after a removal below it: merge it with a neighbour, or even them out.
  // Returns the index of the child whose range now holds `key`.
  private rebalance(parent: NodeView, i: number, key: number): number {
    const j = i > 0 ? i - 1 : i;
    const left = this.shadowNode(parent.child(j));
    parent.setChild(j, left.location);
    const right = this.shadowNode(parent.child(j + 1));
    parent.setChild(j + 1, right.location);
    const l = left.node;
    const r = right.node;
    const total = l.nrEntries + r.nrEntries;
    if (total <= l.maxEntries) {
      l.appendFrom(r, 0, r.nrEntries);
      parent.removeAt(j + 1);
      this.tm.dec(right.location);
      return j;
    }
    const wantLeft = total >> 1;
    if (l.nrEntries > wantLeft) {
      const move = l.nrEntries - wantLeft;
      r.prependFrom(l, move);
      l.truncate(wantLeft);
    } else if (l.nrEntries < wantLeft) {
      const move = wantLeft - l.nrEntries;
      l.appendFrom(r, 0, move);
      r.dropFront(move);
    }
    parent.setKey(j + 1, r.key(0));
    return key >= parent.key(j + 1) ? j + 1 : j;
  }

  // An internal root left with one child hands the root role to that child.
  private collapseRoot(root: number): number {
    for (;;) {
      const node = this.node(root);
      if (node.isLeaf || node.nrEntries !== 1) return root;
      const child = node.child(0);
      this.tm.dec(root);
      root = child;
    }
  }

  private shadowNode(location: number): Writable {
    const shadow = this.tm.shadow(location, nodeValidator);
    const node = new NodeView(shadow.data);
    if (shadow.incChildren) {
      const n = node.nrEntries;
      if (!node.isLeaf) for (let i = 0; i < n; i++) this.tm.inc(node.child(i));
      else if (this.valueType.inc) for (let i = 0; i < n; i++) this.valueType.inc(Buffer.from(node.value(i)));
    }
    return { location: shadow.location, node };
  }
}
