// Runs tasks one at a time in the order they were queued: a promise tail, written once.

export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  /** Queues fn after every task queued before it; a failure does not stop the tasks after it. */
  run<T>(fn: () => Promise<T> | T): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => undefined);
    return next;
  }

  /** Resolves once every task queued so far has settled. */
  async idle(): Promise<void> {
    await this.tail;
  }
}

/** One SerialQueue per key, dropped once its last task settles (per-volume locks). */
export class KeyedSerialQueue<K> {
  private readonly queues = new Map<K, { queue: SerialQueue; pending: number }>();

  run<T>(key: K, fn: () => Promise<T> | T): Promise<T> {
    let entry = this.queues.get(key);
    if (!entry) this.queues.set(key, (entry = { queue: new SerialQueue(), pending: 0 }));
    entry.pending++;
    const e = entry;
    return e.queue.run(fn).finally(() => {
      if (--e.pending === 0) this.queues.delete(key);
    });
  }
}
