// Sends one connection's replies in the form its session negotiated (simple, structured or
// extended), batching those that finish in the same tick into one writev. Pooled READ data
// goes back to its pool once the socket has sent it.
import type { Socket } from 'node:net';
import type { BufferPool } from './buffer-pool';
import type { ReadPiece } from './device-io';
import * as P from './protocol';
import * as R from './replies';

export class ReplySender {
  private corked = false;
  private stopped = false;

  constructor(
    private readonly socket: Socket,
    private readonly extended: boolean,
    private readonly structured: boolean,
    private readonly pool: BufferPool,
  ) {}

  /** The socket is gone: send nothing more (pooled data handed in is released at once). */
  stop(): void {
    this.stopped = true;
  }

  ok(request: R.ReplyTarget & { type: number }): void {
    if (this.chunked(request.type)) this.out(R.doneChunk(this.extended, request));
    else this.out(R.simpleReply(request, 0));
  }

  error(request: R.ReplyTarget & { type: number }, nbdError: number, message: string): void {
    // Simple replies may carry errors for anything but READ once structured replies are on.
    if (this.chunked(request.type)) this.out(R.errorChunk(this.extended, request, nbdError, message));
    else this.out(R.simpleReply(request, nbdError));
  }

  /** READ data at `offset`: an OFFSET_DATA chunk, or the simple reply and its data. */
  data(target: R.ReplyTarget, done: boolean, offset: number, data: Buffer, pooled: boolean): void {
    if (this.structured) this.out(R.dataChunkHeader(this.extended, target, done, offset, data.length));
    else this.out(R.simpleReply(target, 0));
    if (!pooled) this.out(data);
    else if (this.stopped || this.socket.destroyed) this.pool.release(data);
    else this.out(data, () => this.pool.release(data));
  }

  /** A sparse READ's pieces in order: data chunks and hole chunks, the last one DONE. */
  pieces(target: R.ReplyTarget, pieces: readonly ReadPiece[]): void {
    pieces.forEach(({ offset, length, read }, i) => {
      const done = i === pieces.length - 1;
      if (read) this.data(target, done, offset, read.data, read.pooled);
      else this.out(R.holeChunk(this.extended, target, done, offset, length));
    });
  }

  blockStatus(
    target: R.ReplyTarget,
    done: boolean,
    contextId: number,
    extents: ReadonlyArray<{ length: number; flags: number }>,
  ): void {
    this.out(R.blockStatusChunk(this.extended, target, done, contextId, extents));
  }

  private chunked(type: number): boolean {
    return this.extended || (this.structured && type === P.NBD_CMD_READ);
  }

  private out(buffer: Buffer, written?: () => void): void {
    if (this.stopped || this.socket.destroyed) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    this.socket.write(buffer, written);
  }

  private readonly uncork = (): void => {
    this.corked = false;
    if (!this.socket.destroyed) this.socket.uncork();
  };
}
