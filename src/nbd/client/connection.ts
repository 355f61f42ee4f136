// One client connection to one export: requests are pipelined on the socket and answered in
// whatever order the server likes. Replies are parsed from a ByteQueue as they arrive; READ
// payloads go straight into the caller's buffer (see direct-receive.ts).
import net from 'node:net';
import { ByteQueue } from '../byte-queue';
import { directReceiveReads } from '../direct-receive';
import * as P from '../protocol';
import {
  decodeBlockStatus,
  decodeErrorChunk,
  decodeReplyHeader,
  encodeRequest,
  isErrorChunk,
  newReplyHeader,
  readSafeU64,
  replyHeaderBytes,
} from '../wire';
import { negotiate } from './handshake';
import {
  type ConnectOptions,
  type NbdAddress,
  NbdError,
  type NbdExportInfo,
  type ReadResult,
  type StatusExtent,
} from './types';

/**
 * A READ payload with at least this much still to come is read straight into its buffer; below
 * it, one more small socket read costs more than the copy out of the slab.
 */
const DIRECT_RECEIVE_MIN_BYTES = 16 * 1024;
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

interface Pending {
  cookie: number;
  command: number;
  offset: number;
  length: number;
  /** READ: where the data goes. */
  target: Buffer | undefined;
  covered: number;
  holeBytes: number;
  /** BLOCK_STATUS: the extents of each context, by context id. */
  byContext: Map<number, StatusExtent[]> | undefined;
  error: NbdError | undefined;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

/** One connection to one export. Requests may be issued concurrently; they are pipelined. */
export class NbdClient {
  private readonly pending = new Map<number, Pending>();
  private readonly outstanding = new Set<Promise<unknown>>();
  private nextCookie = 1;
  private closed = false;
  private fatal: Error | undefined;
  /** Payload bytes of READ requests sent (what we asked the server for). */
  bytesRequested = 0;
  /** READ data bytes actually received (holes excluded). */
  bytesReceived = 0;
  bytesWritten = 0;

  private readonly header = newReplyHeader();
  /** The READ payload being received: its request, its size, where the next byte goes, how many are left. */
  private stream: Pending | undefined;
  private streamBytes = 0;
  private streamAt = 0;
  private streamLeft = 0;
  /** Whether the chunk being streamed ends its request. */
  private streamDone = false;

  private constructor(
    private readonly socket: net.Socket,
    private readonly queue: ByteQueue,
    readonly info: NbdExportInfo,
  ) {
    const end = (error?: Error) => {
      if (!this.closed) socket.destroy();
      this.failAll(
        this.closed
          ? new Error('NBD connection is closed')
          : (error ?? new Error('NBD server closed the connection')),
      );
    };
    socket.on('error', end);
    socket.on('close', () => end());
  }

  static async connect(
    address: NbdAddress,
    exportName: string,
    options: ConnectOptions = {},
  ): Promise<NbdClient> {
    const queue = new ByteQueue();
    let client: NbdClient | undefined;
    // Reads land in a reused slab or, while a large READ payload streams in, in the caller's
    // buffer: copying it on from a receive buffer took a tenth of a backup's CPU (perf).
    const onread = directReceiveReads({
      sink: () => client?.sink(),
      sinkFilled: (bytes) => client?.sinkFilled(bytes),
      slabData: (view) => {
        queue.push(view);
        client?.parse();
      },
      // Handshake reads may keep views of the slab, so it is reused only once transmitting.
      slabIdle: () => client !== undefined && queue.length === 0,
    });
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s =
        'path' in address
          ? net.createConnection({ path: address.path, onread })
          : net.createConnection({ host: address.host, port: address.port, noDelay: true, onread });
      s.once('connect', () => {
        s.removeListener('error', reject);
        resolve(s);
      });
      s.once('error', reject);
    });
    socket.setNoDelay(true);
    const lost = (error: Error) => queue.fail(error);
    const closed = () => queue.fail(new Error('NBD server closed the connection'));
    socket.on('error', lost);
    socket.on('close', closed);
    const timer = setTimeout(
      () => socket.destroy(new Error('NBD handshake timed out')),
      options.timeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
    );
    try {
      const channel = {
        read: (bytes: number) => queue.read(bytes),
        write: (data: Buffer) => socket.write(data),
      };
      const info = await negotiate(channel, exportName, options);
      socket.removeListener('error', lost);
      socket.removeListener('close', closed);
      client = new NbdClient(socket, queue, info);
      client.parse(); // replies cannot have come yet, but a broken server may send anything
      return client;
    } catch (e) {
      socket.destroy();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** Reads into `into` (its first `length` bytes) when given, else into a new buffer. */
  async read(offset: number, length: number, into?: Buffer): Promise<ReadResult> {
    this.checkRange(offset, length);
    if (into && into.length < length)
      throw new RangeError(`a ${into.length}-byte buffer for ${length} bytes`);
    const target = into ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    this.bytesRequested += length;
    const holeBytes = (await this.send(P.NBD_CMD_READ, 0, offset, length, target)) as number;
    return { data: target, holeBytes };
  }

  async write(offset: number, data: Buffer, options: { fua?: boolean } = {}): Promise<void> {
    this.checkRange(offset, data.length);
    if (this.info.readOnly) throw new NbdError('the export is read-only', P.NBD_EPERM);
    const flags = options.fua ? P.NBD_CMD_FLAG_FUA : 0;
    await this.send(P.NBD_CMD_WRITE, flags, offset, data.length, undefined, data);
    this.bytesWritten += data.length;
  }

  /** Zeroes a range; `noHole` keeps it allocated, `fastZero` fails with ENOTSUP unless it is cheap. */
  async writeZeroes(
    offset: number,
    length: number,
    options: { noHole?: boolean; fastZero?: boolean; fua?: boolean } = {},
  ): Promise<void> {
    this.requireFlag(P.NBD_FLAG_SEND_WRITE_ZEROES, 'WRITE_ZEROES');
    if (options.fastZero) this.requireFlag(P.NBD_FLAG_SEND_FAST_ZERO, 'FAST_ZERO');
    let flags = 0;
    if (options.noHole) flags |= P.NBD_CMD_FLAG_NO_HOLE;
    if (options.fastZero) flags |= P.NBD_CMD_FLAG_FAST_ZERO;
    if (options.fua) flags |= P.NBD_CMD_FLAG_FUA;
    if (offset < 0 || offset + length > this.info.sizeBytes)
      throw new RangeError('zeroing outside the export');
    await this.send(P.NBD_CMD_WRITE_ZEROES, flags, offset, length);
  }

  async trim(offset: number, length: number): Promise<void> {
    this.requireFlag(P.NBD_FLAG_SEND_TRIM, 'TRIM');
    await this.send(P.NBD_CMD_TRIM, 0, offset, length);
  }

  async flush(): Promise<void> {
    if (!(this.info.transmissionFlags & P.NBD_FLAG_SEND_FLUSH)) return;
    await this.send(P.NBD_CMD_FLUSH, 0, 0, 0);
  }

  /** Extents of one selected meta context from `offset` (the server may cover less than asked). */
  async blockStatus(offset: number, length: number, context = P.BASE_ALLOCATION): Promise<StatusExtent[]> {
    const id = this.info.metaContexts.get(context);
    if (id === undefined) throw new Error(`meta context ${context} was not negotiated`);
    const all = (await this.send(P.NBD_CMD_BLOCK_STATUS, 0, offset, length)) as Map<number, StatusExtent[]>;
    return all.get(id) ?? [];
  }

  /** Soft disconnect: waits for outstanding replies, sends DISC, closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    await Promise.allSettled([...this.outstanding]);
    this.closed = true;
    if (!this.fatal && !this.socket.destroyed) {
      const disc = encodeRequest(false, 0, P.NBD_CMD_DISC, 0, 0, 0);
      await new Promise<void>((resolve) => this.socket.end(disc, () => resolve()));
    }
    this.socket.destroy();
  }

  /** Hard disconnect: fails everything outstanding. */
  destroy(error = new Error('NBD connection destroyed')): void {
    this.closed = true;
    this.failAll(error);
    this.socket.destroy();
  }

  private send(
    command: number,
    flags: number,
    offset: number,
    length: number,
    target?: Buffer,
    payload?: Buffer,
  ): Promise<unknown> {
    if (this.fatal) return Promise.reject(this.fatal);
    if (this.closed) return Promise.reject(new Error('NBD connection is closed'));
    const cookie = this.nextCookie++;
    const header = encodeRequest(false, flags, command, cookie, offset, length);
    const promise = new Promise((resolve, reject) => {
      this.pending.set(cookie, {
        cookie,
        command,
        offset,
        length,
        target,
        covered: 0,
        holeBytes: 0,
        byContext: undefined,
        error: undefined,
        resolve,
        reject,
      });
      if (payload) {
        this.socket.cork();
        this.socket.write(header);
        this.socket.write(payload);
        this.socket.uncork();
      } else {
        this.socket.write(header);
      }
    });
    this.outstanding.add(promise);
    const forget = () => this.outstanding.delete(promise);
    promise.then(forget, forget);
    return promise;
  }

  private checkRange(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.info.sizeBytes)
      throw new RangeError(
        `request [${offset}, +${length}) is outside the ${this.info.sizeBytes}-byte export`,
      );
    if (length > this.info.maxPayloadBytes)
      throw new RangeError(
        `request of ${length} bytes exceeds the ${this.info.maxPayloadBytes}-byte maximum`,
      );
  }

  private requireFlag(flag: number, what: string): void {
    if (!(this.info.transmissionFlags & flag))
      throw new NbdError(`the server does not support ${what}`, P.NBD_ENOTSUP);
  }

  private failAll(error: Error): void {
    this.fatal ??= error;
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
  }

  private take(cookie: number): Pending {
    const p = this.pending.get(cookie);
    if (!p) throw new Error(`reply for unknown cookie ${cookie}`);
    return p;
  }

  private finish(p: Pending): void {
    this.pending.delete(p.cookie);
    if (p.error) return p.reject(p.error);
    if (p.command === P.NBD_CMD_READ) {
      if (p.covered !== p.length)
        return p.reject(new NbdError(`READ reply covered ${p.covered} of ${p.length} bytes`, P.NBD_EIO));
      return p.resolve(p.holeBytes);
    }
    if (p.command === P.NBD_CMD_BLOCK_STATUS) return p.resolve(p.byContext ?? new Map());
    p.resolve(undefined);
  }

  /**
   * Where the next socket read should land: the unfilled rest of the READ payload being
   * received, when much of it is still to come and nothing is queued before it.
   */
  private sink(): Buffer | undefined {
    if (this.streamLeft < DIRECT_RECEIVE_MIN_BYTES || this.fatal || this.queue.length > 0) return undefined;
    const target = this.stream!.target!;
    return target.subarray(this.streamAt, this.streamAt + this.streamLeft);
  }

  private sinkFilled(bytes: number): void {
    this.streamAt += bytes;
    this.streamLeft -= bytes;
    this.parse();
  }

  /** Parses every complete reply in the queue (synchronously: slab views are reused after). */
  private parse(): void {
    try {
      const queue = this.queue;
      while (!this.fatal) {
        if (this.stream) {
          const n = queue.drainInto(this.stream.target!, this.streamAt, this.streamLeft);
          this.streamAt += n;
          this.streamLeft -= n;
          if (this.streamLeft > 0) return;
          this.endStream();
          continue;
        }
        if (queue.length < P.MAGIC_BYTES) return;
        queue.peek(P.MAGIC_BYTES);
        const magic = queue.frame.readUInt32BE(queue.frameOffset);
        const headerBytes = replyHeaderBytes(magic);
        // Extended replies only follow EXTENDED_HEADERS, which we never ask for.
        if (headerBytes === undefined || magic === P.NBD_EXTENDED_REPLY_MAGIC)
          throw new Error(`bad reply magic 0x${magic.toString(16)}`);
        if (queue.length < headerBytes) return;
        queue.peek(headerBytes);
        const header = this.header;
        decodeReplyHeader(queue.frame, queue.frameOffset, header);
        const fixedBytes = header.kind === 'simple' ? 0 : chunkFixedBytes(header.type, header.length);
        if (queue.length < headerBytes + fixedBytes) return;
        queue.skip(headerBytes);
        const p = this.take(header.cookie);
        if (header.kind === 'simple') this.onSimple(p, header.error);
        else this.onChunk(p, queue.take(fixedBytes));
      }
    } catch (e) {
      this.socket.destroy();
      this.failAll(e as Error);
    }
  }

  private onSimple(p: Pending, error: number): void {
    if (error) p.error = transmissionError(p.command, error, '');
    if (error || p.command !== P.NBD_CMD_READ) return this.finish(p);
    this.startStream(p, 0, p.length, true);
  }

  /** A structured reply chunk whose fixed part (`fixed`) has arrived. */
  private onChunk(p: Pending, fixed: Buffer): void {
    const { type, flags, length } = this.header;
    const done = (flags & P.NBD_REPLY_FLAG_DONE) !== 0;
    switch (type) {
      case P.NBD_REPLY_TYPE_NONE:
        break;
      case P.NBD_REPLY_TYPE_OFFSET_DATA: {
        const bytes = length - P.OFFSET_DATA_PREFIX_BYTES;
        const at = readSafeU64(fixed, 0, 'OFFSET_DATA offset') - p.offset;
        if (p.command !== P.NBD_CMD_READ || at < 0 || at + bytes > p.length)
          throw new Error('OFFSET_DATA outside the request');
        return this.startStream(p, at, bytes, done);
      }
      case P.NBD_REPLY_TYPE_OFFSET_HOLE: {
        const at = readSafeU64(fixed, 0, 'OFFSET_HOLE offset') - p.offset;
        const size = fixed.readUInt32BE(8);
        if (p.command !== P.NBD_CMD_READ || at < 0 || at + size > p.length || size === 0)
          throw new Error('OFFSET_HOLE outside the request');
        p.target!.fill(0, at, at + size);
        p.covered += size;
        p.holeBytes += size;
        break;
      }
      case P.NBD_REPLY_TYPE_BLOCK_STATUS: {
        const { contextId, extents } = decodeBlockStatus(type, fixed);
        (p.byContext ??= new Map()).set(contextId, extents);
        break;
      }
      default: {
        const { error, message } = decodeErrorChunk(fixed);
        p.error ??= transmissionError(p.command, error, message);
      }
    }
    if (done) this.finish(p);
  }

  private startStream(p: Pending, at: number, bytes: number, done: boolean): void {
    this.stream = p;
    this.streamBytes = bytes;
    this.streamAt = at;
    this.streamLeft = bytes;
    this.streamDone = done;
    if (bytes === 0) this.endStream();
  }

  private endStream(): void {
    const p = this.stream!;
    this.stream = undefined;
    p.covered += this.streamBytes;
    this.bytesReceived += this.streamBytes;
    if (this.streamDone) this.finish(p);
  }
}

/** Bytes of a chunk's payload the parser needs at once (the rest of a data chunk streams). */
function chunkFixedBytes(type: number, length: number): number {
  switch (type) {
    case P.NBD_REPLY_TYPE_NONE:
      if (length !== 0) throw new Error('NONE chunk with a payload');
      return 0;
    case P.NBD_REPLY_TYPE_OFFSET_DATA:
      if (length < P.OFFSET_DATA_PREFIX_BYTES) throw new Error('OFFSET_DATA chunk too short');
      return P.OFFSET_DATA_PREFIX_BYTES;
    case P.NBD_REPLY_TYPE_OFFSET_HOLE:
      return P.OFFSET_HOLE_BYTES;
    case P.NBD_REPLY_TYPE_BLOCK_STATUS:
      return length;
    default:
      if (!isErrorChunk(type)) throw new Error(`unknown reply chunk type ${type}`);
      return length;
  }
}

function transmissionError(command: number, error: number, message: string): NbdError {
  const what = P.commandName(command);
  return new NbdError(`NBD ${what} failed: ${P.errorName(error)}${message ? ` (${message})` : ''}`, error);
}
