import { SerialQueue } from '../util/serial-queue';

/**
 * Lets many I/O operations run at once while pool-wide changes (commit, device create/delete,
 * metadata snapshot) run alone: an exclusive section waits for in-flight operations to drain
 * and holds new ones back until it is done.
 */
export class IoGate {
  private inflight = 0;
  private drained: (() => void) | undefined;
  private closed: Promise<void> | undefined;
  private readonly exclusives = new SerialQueue();

  /** Waits while an exclusive section runs; pair every enter with a leave. */
  async enter(): Promise<void> {
    while (this.closed) await this.closed;
    this.inflight++;
  }

  /** Enters at once, without a promise, unless an exclusive section runs (then false). */
  tryEnter(): boolean {
    if (this.closed) return false;
    this.inflight++;
    return true;
  }

  leave(): void {
    this.inflight--;
    if (this.inflight === 0 && this.drained) this.drained();
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.enter();
    try {
      return await fn();
    } finally {
      this.leave();
    }
  }

  /** Runs `fn` with no I/O in flight; exclusive sections run one after another. */
  exclusive<T>(fn: () => T | Promise<T>): Promise<T> {
    return this.exclusives.run(async () => {
      let reopen!: () => void;
      this.closed = new Promise<void>((r) => (reopen = r));
      try {
        if (this.inflight > 0) await new Promise<void>((r) => (this.drained = r));
        this.drained = undefined;
        return await fn();
      } finally {
        this.closed = undefined;
        reopen();
      }
    });
  }
}

/** Serializes operations on the same key (a virtual block); different keys run in parallel. */
export class KeyedLocks {
  // A held key maps to the callers waiting for it, in arrival order. Taking a free key allocates
  // no promise: a 1 MiB write takes 16 of them per request.
  private readonly waiting = new Map<number, (() => void)[]>();

  /** The lock at once when nobody holds or awaits it (no promise, no microtask turn). */
  tryAcquire(key: number): (() => void) | undefined {
    if (this.waiting.has(key)) return undefined;
    this.waiting.set(key, []);
    return this.releaser(key);
  }

  async acquire(key: number): Promise<() => void> {
    const queue = this.waiting.get(key);
    if (!queue) {
      this.waiting.set(key, []);
      return this.releaser(key);
    }
    await new Promise<void>((resolve) => queue.push(resolve));
    return this.releaser(key);
  }

  get held(): number {
    return this.waiting.size;
  }

  // The next waiter inherits the lock; a second call of the same releaser does nothing.
  private releaser(key: number): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const queue = this.waiting.get(key)!;
      const next = queue.shift();
      if (next) next();
      else this.waiting.delete(key);
    };
  }
}
