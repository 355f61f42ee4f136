import { BTree } from './btree';

type Item =
  | { tree: true; location: number; low: number; high: number; height: number }
  | { tree: false; key: number; value: Buffer };

/**
 * Walks two trees of the same kind together in key order and reports every key in [from, to)
 * whose value differs (or exists on one side only). A subtree that is the same block in both
 * trees is skipped without being read, and so is one wholly outside the range: the cost follows
 * the amount of change, not the tree size.
 */
export function diffTrees(
  tree: BTree,
  rootA: number,
  rootB: number,
  equal: (a: Buffer, b: Buffer) => boolean,
  report: (key: number, a: Buffer | undefined, b: Buffer | undefined) => void,
  from = 0,
  to = Number.MAX_SAFE_INTEGER,
): void {
  // Each queue is a stack whose top is the next item in key order.
  const root = (location: number): Item => ({
    tree: true,
    location,
    low: 0,
    high: Number.MAX_SAFE_INTEGER,
    height: height(tree, location),
  });
  const qa: Item[] = [root(rootA)];
  const qb: Item[] = [root(rootB)];
  const expand = (q: Item[]) => {
    const item = q.pop() as Extract<Item, { tree: true }>;
    const node = tree.node(item.location);
    const n = node.nrEntries;
    for (let i = n - 1; i >= 0; i--) {
      const key = node.key(i);
      if (node.isLeaf) {
        // Views into the node, not copies: the walk is synchronous, so nothing changes under it.
        if (key >= from && key < to) q.push({ tree: false, key, value: node.value(i) });
        continue;
      }
      const low = i === 0 ? item.low : key;
      const high = i + 1 < n ? node.key(i + 1) : item.high;
      if (high > from && low < to)
        q.push({ tree: true, location: node.child(i), low, high, height: item.height - 1 });
    }
  };
  for (;;) {
    const a = qa[qa.length - 1];
    const b = qb[qb.length - 1];
    if (!a && !b) return;
    if (a?.tree && b?.tree) {
      if (a.location === b.location) {
        qa.pop();
        qb.pop();
      } else if (a.low < b.low || (a.low === b.low && a.height > b.height)) expand(qa);
      else if (b.low < a.low || b.height > a.height) expand(qb);
      else {
        expand(qa);
        expand(qb);
      }
      continue;
    }
    if (a?.tree && (!b || b.tree || b.key >= a.low)) {
      expand(qa);
      continue;
    }
    if (b?.tree && (!a || a.tree || a.key >= b.low)) {
      expand(qb);
      continue;
    }
    // Now each head is an entry, or a tree that starts after the other side's entry.
    const ka = a && !a.tree ? a.key : Infinity;
    const kb = b && !b.tree ? b.key : Infinity;
    if (ka === kb) {
      const va = (qa.pop() as Extract<Item, { tree: false }>).value;
      const vb = (qb.pop() as Extract<Item, { tree: false }>).value;
      if (!equal(va, vb)) report(ka, va, vb);
    } else if (ka < kb) {
      report(ka, (qa.pop() as Extract<Item, { tree: false }>).value, undefined);
    } else {
      report(kb, undefined, (qb.pop() as Extract<Item, { tree: false }>).value);
    }
  }
}

function height(tree: BTree, root: number): number {
  let h = 0;
  for (let node = tree.node(root); !node.isLeaf && node.nrEntries > 0; node = tree.node(node.child(0))) h++;
  return h;
}
