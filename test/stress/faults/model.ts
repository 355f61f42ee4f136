// What each 4 KiB page of the device may read back after a reopen. A page holds its durable
// value (acknowledged and then covered by a successful FLUSH, or written with FUA) unless a
// later write to it may have landed: acknowledged writes not yet flushed, and failed writes
// (a failed write leaves its range undefined, as on any disk).

export const PAGE = 4096;

interface PageState {
  durable: number;
  /** Later writes in order; `acked` ones are only pending until the next good flush. */
  later: { value: number; acked: boolean }[];
}

/** Page contents by value: 0 is zeros, anything else a pattern unique to (value, page). */
export function pageData(value: number, page: number): Buffer {
  const b = Buffer.alloc(PAGE);
  if (value === 0) return b;
  for (let i = 0; i < PAGE; i += 8) {
    b.writeUInt32LE(value, i);
    b.writeUInt32LE(page, i + 4);
  }
  return b;
}

export class PageModel {
  private readonly pages = new Map<number, PageState>();
  private nextValue = 1;

  /** Fresh values for `count` pages from `first`, with the data to write. */
  newData(first: number, count: number): { values: number[]; data: Buffer } {
    const values = Array.from({ length: count }, () => this.nextValue++);
    return { values, data: Buffer.concat(values.map((v, i) => pageData(v, first + i))) };
  }

  /** A write (or trim: values 0) of pages from `first` finished; `durable` when written with FUA. */
  wrote(first: number, values: number[], result: 'acked' | 'failed' | 'durable'): void {
    values.forEach((value, i) => {
      const page = this.page(first + i);
      if (result === 'durable') {
        page.durable = value;
        page.later = [];
      } else page.later.push({ value, acked: result === 'acked' });
    });
  }

  /** A FLUSH succeeded: each page's last acknowledged write is durable. */
  flushed(): void {
    for (const page of this.pages.values()) {
      let last = -1;
      page.later.forEach((w, i) => {
        if (w.acked) last = i;
      });
      if (last < 0) continue;
      page.durable = page.later[last].value;
      page.later = page.later.slice(last + 1);
    }
  }

  /** Values the page may hold; a single value means it must read back exactly. */
  allowed(page: number): number[] {
    const state = this.pages.get(page);
    if (!state) return [0];
    return [state.durable, ...state.later.map((w) => w.value)];
  }

  /** Pages whose one allowed value is what an acknowledged, flushed write put there. */
  exactPages(): number {
    let n = 0;
    for (const [page, state] of this.pages)
      if (state.later.length === 0 && this.allowed(page).length === 1) n++;
    return n;
  }

  private page(index: number): PageState {
    let state = this.pages.get(index);
    if (!state) {
      state = { durable: 0, later: [] };
      this.pages.set(index, state);
    }
    return state;
  }
}
