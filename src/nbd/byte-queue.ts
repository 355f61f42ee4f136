// Bytes received from a socket but not yet parsed. Chunks are kept as they arrive and only
// copied when a frame straddles two of them, so large READ/WRITE traffic stays zero-copy
// where it can be.

export class ConnectionClosedError extends Error {
  constructor(message = 'connection closed') {
    super(message);
    this.name = 'ConnectionClosedError';
  }
}

interface Waiter {
  bytes: number;
  resolve: (data: Buffer) => void;
  reject: (error: Error) => void;
}

export class ByteQueue {
  private chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private head = 0;
  private total = 0;
  private waiter: Waiter | undefined;
  private failure: Error | undefined;
  /** Scratch for headers that straddle chunks; large enough for any fixed header. */
  private readonly scratch = Buffer.alloc(64);

  /** Set by `peek`: where the contiguous frame bytes are. */
  frame: Buffer = this.scratch;
  frameOffset = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
    const waiter = this.waiter;
    if (waiter && this.total >= waiter.bytes) {
      this.waiter = undefined;
      waiter.resolve(this.take(waiter.bytes));
    }
  }

  /** Rejects the pending and all future `read`s (the socket went away). */
  fail(error: Error): void {
    this.failure ??= error;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.reject(error);
  }

  /** Waits for exactly `bytes` bytes (handshake phase; one reader at a time). */
  read(bytes: number): Promise<Buffer> {
    if (this.total >= bytes) return Promise.resolve(this.take(bytes));
    if (this.failure) return Promise.reject(this.failure);
    if (this.waiter) return Promise.reject(new Error('ByteQueue: concurrent read'));
    return new Promise((resolve, reject) => {
      this.waiter = { bytes, resolve, reject };
    });
  }

  /**
   * Makes the first `bytes` bytes (≤ 64) addressable as `frame[frameOffset…]` without
   * consuming them. Caller must have checked `length >= bytes`.
   */
  peek(bytes: number): void {
    const first = this.chunks[0];
    if (first.length - this.head >= bytes) {
      this.frame = first;
      this.frameOffset = this.head;
      return;
    }
    this.copyTo(this.scratch, 0, bytes, false);
    this.frame = this.scratch;
    this.frameOffset = 0;
  }

  /** Whether the next `bytes` bytes sit in one received chunk (so `take` returns a view). */
  contiguous(bytes: number): boolean {
    return this.chunks.length > 0 && this.chunks[0].length - this.head >= bytes;
  }

  /** Removes and returns `bytes` bytes: a view when they sit in one chunk, a copy otherwise. */
  take(bytes: number): Buffer {
    if (bytes === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    if (first.length - this.head >= bytes) {
      const view = first.subarray(this.head, this.head + bytes);
      this.skip(bytes);
      return view;
    }
    const out = Buffer.allocUnsafe(bytes);
    this.copyTo(out, 0, bytes, true);
    return out;
  }

  /** Removes `bytes` bytes (caller checked `length`) as views of the received chunks: no copy. */
  takeViews(bytes: number): Buffer[] {
    const views: Buffer[] = [];
    let left = bytes;
    while (left > 0) {
      const first = this.chunks[0];
      const n = Math.min(first.length - this.head, left);
      views.push(first.subarray(this.head, this.head + n));
      this.skip(n);
      left -= n;
    }
    return views;
  }

  /** Moves up to `bytes` bytes into `target` at `targetOffset`; returns how many moved. */
  drainInto(target: Buffer, targetOffset: number, bytes: number): number {
    const n = Math.min(bytes, this.total);
    if (n > 0) this.copyTo(target, targetOffset, n, true);
    return n;
  }

  /** Discards up to `bytes` bytes; returns how many were discarded. */
  skip(bytes: number): number {
    let left = Math.min(bytes, this.total);
    const skipped = left;
    while (left > 0) {
      const first = this.chunks[0];
      const available = first.length - this.head;
      if (available > left) {
        this.head += left;
        break;
      }
      left -= available;
      this.chunks.shift();
      this.head = 0;
    }
    this.total -= skipped;
    return skipped;
  }

  private copyTo(target: Buffer, targetOffset: number, bytes: number, consume: boolean): void {
    let copied = 0;
    let index = 0;
    let position = this.head;
    while (copied < bytes) {
      const chunk = this.chunks[index];
      const n = Math.min(chunk.length - position, bytes - copied);
      chunk.copy(target, targetOffset + copied, position, position + n);
      copied += n;
      position += n;
      if (position === chunk.length) {
        index++;
        position = 0;
      }
    }
    if (consume) {
      this.chunks.splice(0, index);
      this.head = position;
      this.total -= bytes;
    }
  }
}
