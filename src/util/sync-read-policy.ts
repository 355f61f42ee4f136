/** Reads of at least this size count as large: their copy takes tens of microseconds. */
const LARGE_READ_BYTES = 256 * 1024;

/**
 * Decides whether a page-cache read runs synchronously on the event loop or on libuv's
 * threadpool. Small reads up to `maxBytes` always run synchronously (a threadpool round trip
 * costs more than the read). Of the large reads that arrive in one event-loop turn (pipelined
 * sequential requests), only the first does: the rest copy on other cores while the loop sends
 * replies. A lone large read, as at queue depth 1, keeps the lower latency of a synchronous one.
 */
export class SyncReadPolicy {
  private largeThisTurn = 0;

  constructor(readonly maxBytes: number) {}

  runsSync(bytes: number): boolean {
    if (bytes > this.maxBytes) return false;
    if (bytes < LARGE_READ_BYTES) return true;
    if (this.largeThisTurn === 0) setImmediate(this.endTurn);
    return this.largeThisTurn++ === 0;
  }

  private readonly endTurn = (): void => {
    this.largeThisTurn = 0;
  };
}
