// The transmission phase: parse pipelined requests, run them concurrently against the
// export's BlockDevice, and answer each as soon as it completes (out of order).
import type { Socket } from 'node:net';
import type winston from 'winston';
import type { BlockDevice } from '../block-device';
import { BufferPool } from './buffer-pool';
import type { ByteQueue } from './byte-queue';
import { NbdCommandError, nbdErrorOf, ProtocolError } from './errors';
import type { Session } from './handshake';
import { contextExtents } from './meta-context';
import * as P from './protocol';
import * as R from './replies';

export interface TransmissionLimits {
  /** Stop reading requests while in-flight payloads, reads and unsent replies exceed this. */
  maxPendingBytes: number;
  /** Stop reading requests while this many are being served. */
  maxInFlight: number;
}

/** One parsed request. Field order is fixed so V8 keeps a single shape. */
interface Request extends R.ReplyTarget {
  type: number;
  flags: number;
  /** Offset and length as numbers; Number.MAX_SAFE_INTEGER when beyond 2^53 (always out of range). */
  offset: number;
  length: number;
  payload: Buffer | undefined;
  /** The payload as received-chunk views, for devices that take vectored writes. */
  parts: Buffer[] | undefined;
  /** The payload came from the pool and goes back once the device is done with it. */
  pooled: boolean;
  /** Bytes of memory this request accounts for while in flight. */
  reserved: number;
}

/** A device with the optional `readInto` fast path (READ data in recycled buffers). */
export type ReadIntoDevice = Required<Pick<BlockDevice, 'readInto'>>;

function canReadInto(device: object): device is ReadIntoDevice {
  return typeof (device as Partial<ReadIntoDevice>).readInto === 'function';
}

/** A device with the optional `writeVectored` fast path (WRITE payloads left in socket chunks). */
export type WriteVectoredDevice = Required<Pick<BlockDevice, 'writeVectored'>>;

function canWriteVectored(device: object): device is WriteVectoredDevice {
  return typeof (device as Partial<WriteVectoredDevice>).writeVectored === 'function';
}

/** Shared by all connections: bounded, so idle servers hold at most this much. */
const pool = new BufferPool(64 * 1024 * 1024);

const TWO_POW_32 = 0x100000000;
/** High halves at or above this make a u64 larger than 2^53. */
const UNSAFE_HI = 0x200000;
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
  private corked = false;
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
    this.headerBytes = this.extended ? P.EXTENDED_REQUEST_BYTES : P.COMPACT_REQUEST_BYTES;
    this.requestMagic = this.extended ? P.NBD_EXTENDED_REQUEST_MAGIC : P.NBD_REQUEST_MAGIC;
    this.sparseReads = session.export.sparseReads !== false;
    this.vectored = canWriteVectored(session.export.device);
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
      const flags = frame.readUInt16BE(at + 4);
      const type = frame.readUInt16BE(at + 6);
      const cookieHi = frame.readUInt32BE(at + 8);
      const cookieLo = frame.readUInt32BE(at + 12);
      const offsetHi = frame.readUInt32BE(at + 16);
      const offsetLo = frame.readUInt32BE(at + 20);
      let length: number;
      let payloadBytes: number;
      if (this.extended) {
        const lengthHi = frame.readUInt32BE(at + 24);
        const lengthLo = frame.readUInt32BE(at + 28);
        length = lengthHi >= UNSAFE_HI ? Number.MAX_SAFE_INTEGER : lengthHi * TWO_POW_32 + lengthLo;
        payloadBytes = flags & P.NBD_CMD_FLAG_PAYLOAD_LEN ? length : 0;
      } else {
        length = frame.readUInt32BE(at + 24);
        payloadBytes = type === P.NBD_CMD_WRITE ? length : 0;
      }
      queue.skip(this.headerBytes);

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
      const request: Request = {
        cookieHi,
        cookieLo,
        offsetHi,
        offsetLo,
        type,
        flags,
        offset: offsetHi >= UNSAFE_HI ? Number.MAX_SAFE_INTEGER : offsetHi * TWO_POW_32 + offsetLo,
        length,
        payload: undefined,
        parts: undefined,
        pooled: false,
        reserved:
          payloadBytes > 0
            ? payloadBytes
            : type === P.NBD_CMD_READ
              ? Math.min(length, P.MAX_PAYLOAD_BYTES)
              : 0,
      };
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
      this.replyError(request, nbdError, context.reason);
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
      this.replyOk(request);
      return;
    }
    if (this.structured && this.sparseReads && !(request.flags & P.NBD_CMD_FLAG_DF)) {
      await this.readSparse(request);
      return;
    }
    const { data, pooled } = await this.readData(request.offset, request.length);
    if (this.structured)
      this.out(R.dataChunkHeader(this.extended, request, true, request.offset, data.length));
    else this.out(R.simpleReply(request, 0));
    this.outData(data, pooled);
  }

  /** Reads device data, into a recycled buffer when the device supports it. */
  private async readData(offset: number, length: number): Promise<{ data: Buffer; pooled: boolean }> {
    const device = this.session.export.device;
    if (canReadInto(device)) {
      const data = pool.acquire(length);
      try {
        await device.readInto(offset, data);
      } catch (error) {
        pool.release(data);
        throw error;
      }
      return { data, pooled: true };
    }
    const data = await device.read(offset, length);
    checkLength(data, length);
    return { data, pooled: false };
  }

  /** Structured READ that answers holes with OFFSET_HOLE chunks instead of zeros. */
  private async readSparse(request: Request): Promise<void> {
    const device = this.session.export.device;
    const end = request.offset + request.length;
    const pieces: Array<{ offset: number; length: number; zero: boolean }> = [];
    let cursor = request.offset;
    for (const extent of await device.blockStatus(request.offset, request.length)) {
      if (extent.offset > cursor || extent.offset + extent.length <= cursor) break;
      const pieceEnd = Math.min(extent.offset + extent.length, end);
      pushPiece(pieces, cursor, pieceEnd - cursor, extent.zero || extent.hole);
      cursor = pieceEnd;
      if (cursor >= end) break;
    }
    if (cursor < end) pushPiece(pieces, cursor, end - cursor, false);

    const reads = await Promise.allSettled(
      pieces.map((p) => (p.zero ? undefined : this.readData(p.offset, p.length))),
    );
    const failure = reads.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure) {
      for (const r of reads) if (r.status === 'fulfilled' && r.value?.pooled) pool.release(r.value.data);
      throw failure.reason;
    }
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i];
      const done = i === pieces.length - 1;
      const read = (reads[i] as PromiseFulfilledResult<{ data: Buffer; pooled: boolean } | undefined>).value;
      if (read === undefined) {
        this.out(R.holeChunk(this.extended, request, done, piece.offset, piece.length));
      } else {
        this.out(R.dataChunkHeader(this.extended, request, done, piece.offset, read.data.length));
        this.outData(read.data, read.pooled);
      }
    }
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
      const device = this.session.export.device;
      if (request.parts) {
        await (device as BlockDevice & WriteVectoredDevice).writeVectored(request.offset, request.parts, {
          fua,
        });
      } else {
        await device.write(request.offset, request.payload as Buffer, fua ? { fua } : undefined);
      }
    }
    this.replyOk(request);
  }

  private async flush(request: Request): Promise<void> {
    if (request.flags & ~FLAGS_PLAIN) throw new NbdCommandError(P.NBD_EINVAL, 'bad FLUSH flags');
    if (request.offset !== 0 || request.length !== 0) {
      throw new NbdCommandError(P.NBD_EINVAL, 'FLUSH needs offset and length 0');
    }
    await this.session.export.device.flush();
    this.replyOk(request);
  }

  private async trim(request: Request): Promise<void> {
    this.checkRange(request, FLAGS_PLAIN, P.NBD_EINVAL);
    this.checkWritable();
    if (request.length > 0) {
      const fua = (request.flags & P.NBD_CMD_FLAG_FUA) !== 0;
      await this.session.export.device.trim(request.offset, request.length, { fua });
    }
    this.replyOk(request);
  }

  private cache(request: Request): void {
    // A prefetch hint: validated, then ignored (the page cache or the pool's cache decides).
    this.checkRange(request, FLAGS_PLAIN, P.NBD_EINVAL);
    this.replyOk(request);
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
    this.replyOk(request);
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
      this.out(R.blockStatusChunk(this.extended, request, done, contexts[i].id, answers[i]));
    }
  }

  private replyOk(request: Request): void {
    if (this.extended || (this.structured && request.type === P.NBD_CMD_READ)) {
      this.out(R.doneChunk(this.extended, request));
    } else {
      this.out(R.simpleReply(request, 0));
    }
  }

  private replyError(request: Request, nbdError: number, message: string): void {
    // Simple replies may carry errors for anything but READ once structured replies are on.
    if (this.extended || (this.structured && request.type === P.NBD_CMD_READ)) {
      this.out(R.errorChunk(this.extended, request, nbdError, message));
    } else {
      this.out(R.simpleReply(request, nbdError));
    }
  }

  /** Queues bytes for the socket; replies finishing in the same tick leave in one writev. */
  private out(buffer: Buffer, written?: () => void): void {
    if (this.stopped || this.socket.destroyed) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    this.socket.write(buffer, written);
  }

  /** Like `out` for READ data; a pooled buffer goes back once the socket has sent it. */
  private outData(data: Buffer, pooled: boolean): void {
    if (!pooled) {
      this.out(data);
    } else if (this.stopped || this.socket.destroyed) {
      pool.release(data);
    } else {
      this.out(data, () => pool.release(data));
    }
  }

  private readonly uncork = (): void => {
    this.corked = false;
    if (!this.socket.destroyed) this.socket.uncork();
  };

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

function pushPiece(
  pieces: Array<{ offset: number; length: number; zero: boolean }>,
  offset: number,
  length: number,
  zero: boolean,
): void {
  const last = pieces[pieces.length - 1];
  if (last && last.zero === zero) last.length += length;
  else pieces.push({ offset, length, zero });
}

function checkLength(data: Buffer, expected: number): void {
  if (data.length !== expected) {
    throw new NbdCommandError(P.NBD_EIO, `device returned ${data.length} bytes, expected ${expected}`);
  }
}
