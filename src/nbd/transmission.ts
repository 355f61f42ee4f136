// The transmission phase: parse pipelined requests, run them concurrently against the
// export's BlockDevice, and answer each as soon as it completes (out of order).
import type { Socket } from 'node:net';
import type winston from 'winston';
import { BufferPool } from './buffer-pool';
import type { ByteQueue } from './byte-queue';
import { canWriteVectored, readData, readSparse, writePayload } from './device-io';
import { NbdCommandError, nbdErrorOf, ProtocolError } from './errors';
import type { Session } from './handshake';
import { contextExtents } from './meta-context';
import * as P from './protocol';
import type { ReplyTarget } from './replies';
import { ReplySender } from './reply-sender';
import { decodeRequest, type RequestHeader, requestBytes } from './wire';

export interface TransmissionLimits {
  /** Stop reading requests while in-flight payloads, reads and unsent replies exceed this. */
  maxPendingBytes: number;
  /** Stop reading requests while this many are being served. */
  maxInFlight: number;
}

/** One parsed request. Field order is fixed so V8 keeps a single shape. */
interface Request extends RequestHeader, ReplyTarget {
  payload: Buffer | undefined;
  /** The payload as received-chunk views, for devices that take vectored writes. */
  parts: Buffer[] | undefined;
  /** The payload came from the pool and goes back once the device is done with it. */
  pooled: boolean;
  /** Bytes of memory this request accounts for while in flight. */
  reserved: number;
}

/** Shared by all connections: bounded, so idle servers hold at most this much. */
const pool = new BufferPool(64 * 1024 * 1024);

/** Cap on extents per BLOCK_STATUS chunk: keeps one reply ≤ 1 MiB (the spec allows 2^20). */
const MAX_EXTENTS = 65536;

const FLAGS_READ = P.NBD_CMD_FLAG_FUA | P.NBD_CMD_FLAG_DF;
const FLAGS_PLAIN = P.NBD_CMD_FLAG_FUA;
const FLAGS_ZEROES = P.NBD_CMD_FLAG_FUA | P.NBD_CMD_FLAG_NO_HOLE | P.NBD_CMD_FLAG_FAST_ZERO;
const FLAGS_BLOCK_STATUS = P.NBD_CMD_FLAG_FUA | P.NBD_CMD_FLAG_REQ_ONE;

export class Transmission {
  private readonly extended: boolean;
  private readonly structured: boolean;
  private readonly headerBytes: number;
  private readonly requestMagic: number;
  private readonly sparseReads: boolean;
  private readonly replies: ReplySender;
  private inFlight = 0;
  private pendingBytes = 0;
  private inputPaused = false;
  /** A WRITE whose payload is still arriving. */
  private partial: { request: Request; filled: number } | undefined;
  /** A WRITE waiting for its whole payload to be queued (vectored devices). */
  private awaiting: Request | undefined;
  private readonly vectored: boolean;
  /** DISC received or a graceful close asked for: take no new requests. */
  private ending = false;
  private stopped = false;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly socket: Socket,
    private readonly queue: ByteQueue,
    private readonly session: Session,
    private readonly limits: TransmissionLimits,
    private readonly log: winston.Logger,
    /** Called once the client is done (DISC served) or must be dropped (protocol error). */
    private readonly onFinished: (error?: ProtocolError) => void,
    /**
     * The socket reads where `sink()`/`slabData` say (see direct-receive.ts): large WRITE
     * payloads are read straight into one buffer, so the vectored path has nothing to add.
     */
    private readonly directReceive = false,
  ) {
    this.extended = session.extendedHeaders;
    this.structured = session.structuredReplies;
    this.headerBytes = requestBytes(this.extended);
    this.requestMagic = this.extended ? P.NBD_EXTENDED_REQUEST_MAGIC : P.NBD_REQUEST_MAGIC;
    this.sparseReads = session.export.sparseReads !== false;
    this.vectored = canWriteVectored(session.export.device);
    this.replies = new ReplySender(socket, this.extended, this.structured, pool);
    socket.on('drain', this.maybeResume);
  }

  get requestsInFlight(): number {
    return this.inFlight;
  }

  /** New bytes are in the queue (or input was resumed): parse as many requests as allowed. */
  readonly onData = (): void => {
    try {
      this.parse();
    } catch (error) {
      this.fail(error instanceof ProtocolError ? error : new ProtocolError(String(error)));
    }
  };

  /** The socket is gone: drop everything still to be sent. */
  stop(): void {
    this.stopped = true;
    this.replies.stop();
    this.socket.removeListener('drain', this.maybeResume);
    this.wakeIdleWaiters();
  }

  /** Takes no new requests; once those in flight are answered, finishes like DISC. */
  drain(): Promise<void> {
    this.ending = true;
    this.pauseInput();
    if (this.stopped) return Promise.resolve();
    const idle = new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    this.finishIfIdle();
    return idle;
  }

  private parse(): void {
    const queue = this.queue;
    while (!this.ending && !this.stopped) {
      if (this.partial) {
        const { request } = this.partial;
        const payload = request.payload as Buffer;
        this.partial.filled += queue.drainInto(
          payload,
          this.partial.filled,
          payload.length - this.partial.filled,
        );
        if (this.partial.filled < payload.length) return;
        this.partial = undefined;
        this.dispatch(request);
        continue;
      }
      if (this.awaiting) {
        const request = this.awaiting;
        if (queue.length < request.reserved) return;
        this.awaiting = undefined;
        request.parts = queue.takeViews(request.reserved);
        this.dispatch(request);
        continue;
      }
      if (this.overloaded()) {
        this.pauseInput();
        return;
      }
      if (queue.length < this.headerBytes) return;
      queue.peek(this.headerBytes);
      const frame = queue.frame;
      const at = queue.frameOffset;
      if (frame.readUInt32BE(at) !== this.requestMagic) {
        throw new ProtocolError(`bad request magic 0x${frame.readUInt32BE(at).toString(16)}`);
      }
      const request = newRequest();
      decodeRequest(frame, at, this.extended, request);
      queue.skip(this.headerBytes);
      const { type, length } = request;
      const carriesPayload = this.extended
        ? (request.flags & P.NBD_CMD_FLAG_PAYLOAD_LEN) !== 0
        : type === P.NBD_CMD_WRITE;
      const payloadBytes = carriesPayload ? length : 0;

      if (type === P.NBD_CMD_DISC) {
        this.log.debug('client sent DISC');
        this.ending = true;
        this.pauseInput();
        this.finishIfIdle();
        return;
      }
      if (payloadBytes > P.MAX_PAYLOAD_BYTES) {
        throw new ProtocolError(
          `${P.commandName(type)} payload of ${payloadBytes} bytes exceeds the maximum`,
        );
      }
      request.reserved =
        payloadBytes > 0 ? payloadBytes : type === P.NBD_CMD_READ ? Math.min(length, P.MAX_PAYLOAD_BYTES) : 0;
      this.pendingBytes += request.reserved;
      this.inFlight++;
      if (payloadBytes > 0) {
        // With direct receive the queue's bytes sit in a slab that is reused once they are
        // consumed, so a payload never stays a view of it.
        if (!this.directReceive && queue.contiguous(payloadBytes)) {
          request.payload = queue.take(payloadBytes);
        } else if (this.vectored && !this.directReceive && type === P.NBD_CMD_WRITE) {
          // Keep the received chunks and hand them to pwritev: no copy at all.
          this.awaiting = request;
          continue;
        } else {
          // Stream the payload into its final (recycled) buffer as it arrives: one copy, or none
          // with direct receive, where the socket reads the rest into it (`sink`).
          request.payload = pool.acquire(payloadBytes);
          request.pooled = true;
          this.partial = { request, filled: queue.drainInto(request.payload, 0, payloadBytes) };
          continue;
        }
      }
      this.dispatch(request);
    }
  }

  /**
   * Direct receive: the unfilled rest of the WRITE payload being received, once nothing else is
   * queued before it. Its pooled buffer is never released while the connection lives, since
   * the socket may already have been told to read into it.
   */
  sink(): Buffer | undefined {
    const partial = this.partial;
    if (!partial || this.stopped || this.queue.length > 0) return undefined;
    return (partial.request.payload as Buffer).subarray(partial.filled);
  }

  sinkFilled(bytes: number): void {
    const partial = this.partial;
    if (!partial || this.stopped) return; // no partial: cannot happen, the sink was offered for one
    partial.filled += bytes;
    if (partial.filled < (partial.request.payload as Buffer).length) return;
    this.partial = undefined;
    this.dispatch(partial.request);
    this.onData();
  }

  private dispatch(request: Request): void {
    this.execute(request).then(
      () => this.complete(request),
      (error: unknown) => {
        // execute() answers its own errors; reaching here is a bug, so drop only this client.
        this.log.error('request handler failed', { error: String(error) });
        this.complete(request);
        this.fail(new ProtocolError('internal error'));
      },
    );
  }

  private complete(request: Request): void {
    this.inFlight--;
    this.pendingBytes -= request.reserved;
    // Writes are done with their payload once the device's promise settles.
    if (request.pooled) pool.release(request.payload as Buffer);
    request.payload = undefined;
    request.parts = undefined;
    if (this.ending) this.finishIfIdle();
    else if (this.inputPaused) this.maybeResume();
  }

  private async execute(request: Request): Promise<void> {
    try {
      switch (request.type) {
        case P.NBD_CMD_READ:
          return await this.read(request);
        case P.NBD_CMD_WRITE:
          return await this.write(request);
        case P.NBD_CMD_FLUSH:
          return await this.flush(request);
        case P.NBD_CMD_TRIM:
          return await this.trim(request);
        case P.NBD_CMD_CACHE:
          return this.cache(request);
        case P.NBD_CMD_WRITE_ZEROES:
          return await this.writeZeroes(request);
        case P.NBD_CMD_BLOCK_STATUS:
          return await this.blockStatus(request);
        default:
          throw new NbdCommandError(P.NBD_EINVAL, `unknown command ${request.type}`);
      }
    } catch (error) {
      const nbdError = nbdErrorOf(error);
      const context = {
        command: P.commandName(request.type),
        offset: request.offset,
        length: request.length,
        nbdError,
        reason: error instanceof Error ? error.message : String(error),
      };
      // Bad requests are the client's problem (debug); device failures are ours (warn).
      if (error instanceof NbdCommandError || error instanceof RangeError)
        this.log.debug('request refused', context);
      else this.log.warn('request failed', context);
      this.replies.error(request, nbdError, context.reason);
    }
  }

  /** Throws the NBD error for a request outside the export or misaligned. */
  private checkRange(request: Request, allowedFlags: number, beyondEnd: number): void {
    if (request.flags & ~allowedFlags) {
      throw new NbdCommandError(P.NBD_EINVAL, `flags 0x${request.flags.toString(16)} not valid here`);
    }
    const { offset, length } = request;
    if (offset + length > this.session.export.device.sizeBytes) {
      throw new NbdCommandError(beyondEnd, 'request beyond the end of the export');
    }
    if (offset % P.MIN_BLOCK_BYTES !== 0 || length % P.MIN_BLOCK_BYTES !== 0) {
      throw new NbdCommandError(P.NBD_EINVAL, 'request not aligned to 512 bytes');
    }
  }

  private checkWritable(): void {
    if (this.session.readOnly) throw new NbdCommandError(P.NBD_EPERM, 'export is read-only');
  }

  private async read(request: Request): Promise<void> {
    this.checkRange(request, this.structured ? FLAGS_READ : FLAGS_PLAIN, P.NBD_EINVAL);
    if (request.length > P.MAX_PAYLOAD_BYTES) throw new NbdCommandError(P.NBD_EINVAL, 'read too large');
    if (request.length === 0) {
      this.replies.ok(request);
      return;
    }
    const device = this.session.export.device;
    if (this.structured && this.sparseReads && !(request.flags & P.NBD_CMD_FLAG_DF)) {
      this.replies.pieces(request, await readSparse(device, pool, request.offset, request.length));
      return;
    }
    const { data, pooled } = await readData(device, pool, request.offset, request.length);
    this.replies.data(request, true, request.offset, data, pooled);
  }

  private async write(request: Request): Promise<void> {
    const allowed = this.extended ? P.NBD_CMD_FLAG_FUA | P.NBD_CMD_FLAG_PAYLOAD_LEN : P.NBD_CMD_FLAG_FUA;
    if (this.extended && !(request.flags & P.NBD_CMD_FLAG_PAYLOAD_LEN)) {
      throw new NbdCommandError(P.NBD_EINVAL, 'extended WRITE without PAYLOAD_LEN');
    }
    this.checkRange(request, allowed, P.NBD_ENOSPC);
    this.checkWritable();
    if (request.length > 0) {
      const fua = (request.flags & P.NBD_CMD_FLAG_FUA) !== 0;
      await writePayload(this.session.export.device, request.offset, request.payload, request.parts, fua);
    }
    this.replies.ok(request);
  }

  private async flush(request: Request): Promise<void> {
    if (request.flags & ~FLAGS_PLAIN) throw new NbdCommandError(P.NBD_EINVAL, 'bad FLUSH flags');
    if (request.offset !== 0 || request.length !== 0) {
      throw new NbdCommandError(P.NBD_EINVAL, 'FLUSH needs offset and length 0');
    }
    await this.session.export.device.flush();
    this.replies.ok(request);
  }

  private async trim(request: Request): Promise<void> {
    this.checkRange(request, FLAGS_PLAIN, P.NBD_EINVAL);
    this.checkWritable();
    if (request.length > 0) {
      const fua = (request.flags & P.NBD_CMD_FLAG_FUA) !== 0;
      await this.session.export.device.trim(request.offset, request.length, { fua });
    }
    this.replies.ok(request);
  }

  private cache(request: Request): void {
    // A prefetch hint: validated, then ignored (the page cache or the pool's cache decides).
    this.checkRange(request, FLAGS_PLAIN, P.NBD_EINVAL);
    this.replies.ok(request);
  }

  private async writeZeroes(request: Request): Promise<void> {
    this.checkRange(request, FLAGS_ZEROES, P.NBD_ENOSPC);
    this.checkWritable();
    const noHole = (request.flags & P.NBD_CMD_FLAG_NO_HOLE) !== 0;
    if (request.flags & P.NBD_CMD_FLAG_FAST_ZERO && (noHole || !this.session.export.fastZero)) {
      throw new NbdCommandError(P.NBD_ENOTSUP, 'zeroing would not be faster than writing');
    }
    if (request.length > 0) {
      const fua = (request.flags & P.NBD_CMD_FLAG_FUA) !== 0;
      await this.session.export.device.writeZeroes(request.offset, request.length, { fua, noHole });
    }
    this.replies.ok(request);
  }

  private async blockStatus(request: Request): Promise<void> {
    const contexts = this.session.metaContexts;
    if (contexts.length === 0) throw new NbdCommandError(P.NBD_EINVAL, 'no meta context negotiated');
    if (request.length === 0) throw new NbdCommandError(P.NBD_EINVAL, 'BLOCK_STATUS of length 0');
    this.checkRange(request, FLAGS_BLOCK_STATUS, P.NBD_EINVAL);
    const maxExtents = request.flags & P.NBD_CMD_FLAG_REQ_ONE ? 1 : MAX_EXTENTS;
    const answers = await Promise.all(
      contexts.map((c) =>
        contextExtents(this.session.export, c.name, request.offset, request.length, maxExtents),
      ),
    );
    for (let i = 0; i < contexts.length; i++) {
      const done = i === contexts.length - 1;
      this.replies.blockStatus(request, done, contexts[i].id, answers[i]);
    }
  }

  private overloaded(): boolean {
    if (this.inFlight === 0) return false;
    if (this.inFlight >= this.limits.maxInFlight) return true;
    return this.pendingBytes + this.socket.writableLength >= this.limits.maxPendingBytes;
  }

  private pauseInput(): void {
    if (this.inputPaused) return;
    this.inputPaused = true;
    this.socket.pause();
  }

  private readonly maybeResume = (): void => {
    if (!this.inputPaused || this.ending || this.stopped) return;
    const backlog = this.pendingBytes + this.socket.writableLength;
    if (this.inFlight >= this.limits.maxInFlight || backlog >= this.limits.maxPendingBytes / 2) return;
    this.inputPaused = false;
    this.socket.resume();
    this.onData();
  };

  private finishIfIdle(): void {
    if (this.inFlight > 0) return;
    this.wakeIdleWaiters();
    if (!this.stopped) this.onFinished();
  }

  private wakeIdleWaiters(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const wake of waiters) wake();
  }

  private fail(error: ProtocolError): void {
    if (this.stopped) return;
    this.ending = true;
    this.stop();
    this.onFinished(error);
  }
}

/** A request to be filled by `decodeRequest`, every field present so all share one shape. */
function newRequest(): Request {
  return {
    flags: 0,
    type: 0,
    cookieHi: 0,
    cookieLo: 0,
    offsetHi: 0,
    offsetLo: 0,
    offset: 0,
    length: 0,
    payload: undefined,
    parts: undefined,
    pooled: false,
    reserved: 0,
  };
}
