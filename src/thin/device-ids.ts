// The device ids in use, with the lowest free one found in O(log n): ids at or above `scanFrom`
// are found by moving that cursor forward (each id is passed once), and ids freed below it wait
// in a min-heap. The heap may hold ids taken again since; they are skipped when they surface.
import { MAX_DEVICE_ID } from './mapping';

export class DeviceIdSet {
  private readonly used: Set<number>;
  private readonly freed: number[] = [];
  private scanFrom = 0;

  constructor(ids: Iterable<number>) {
    this.used = new Set(ids);
  }

  get size(): number {
    return this.used.size;
  }

  has(id: number): boolean {
    return this.used.has(id);
  }

  add(id: number): void {
    this.used.add(id);
  }

  delete(id: number): void {
    if (!this.used.delete(id)) return;
    if (id < this.scanFrom) this.push(id);
  }

  /** The lowest id not in use, or undefined when all 2^24 are. */
  lowestFree(): number | undefined {
    while (this.freed.length && this.used.has(this.freed[0])) this.pop();
    if (this.freed.length) return this.freed[0];
    while (this.scanFrom <= MAX_DEVICE_ID && this.used.has(this.scanFrom)) this.scanFrom++;
    return this.scanFrom <= MAX_DEVICE_ID ? this.scanFrom : undefined;
  }

  private push(id: number): void {
    const h = this.freed;
    h.push(id);
    for (let i = h.length - 1; i > 0;) {
      const parent = (i - 1) >> 1;
      if (h[parent] <= h[i]) break;
      [h[parent], h[i]] = [h[i], h[parent]];
      i = parent;
    }
  }

  private pop(): void {
    const h = this.freed;
    const last = h.pop()!;
    if (!h.length) return;
    h[0] = last;
    for (let i = 0; ;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && h[l] < h[m]) m = l;
      if (r < h.length && h[r] < h[m]) m = r;
      if (m === i) break;
      [h[m], h[i]] = [h[i], h[m]];
      i = m;
    }
  }
}
