// A small NBD client for tests: speaks the handshake and transmission frames directly, so
// tests can send exactly what they want (extended headers, bad frames, pipelined requests).
import net from 'node:net';
import { ByteQueue } from '../../src/nbd/byte-queue';
import * as P from '../../src/nbd/protocol';
import {
  decodeBlockStatus,
  decodeGreeting,
  decodeInfo,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  decodeReplyHeader,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
  encodeU32,
  isErrorChunk,
  newReplyHeader,
  readU64,
  replyHeaderBytes,
} from '../../src/nbd/wire';

export type Target = { port: number; host?: string } | { path: string };

export interface OptionReply {
  type: number;
  data: Buffer;
}

export interface Chunk {
  flags: number;
  type: number;
  offset?: number;
  data: Buffer;
}

export interface Reply {
  /** Error from a simple reply or an error chunk (0 = success). */
  error: number;
  /** READ data (simple replies) or the assembled content of data/hole chunks. */
  data?: Buffer;
  chunks: Chunk[];
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  resolve: (reply: Reply) => void;
  reject: (error: Error) => void;
  chunks: Chunk[];
  error: number;
}

export class RawClient {
  readonly queue = new ByteQueue();
  structured = false;
  extended = false;
  private nextCookie = 1;
  private readonly pending = new Map<number, Pending>();
  private transmitting = false;
  private readonly header = newReplyHeader();
  closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      if (this.transmitting) this.parseReplies();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.queue.fail(new Error('closed'));
        for (const p of this.pending.values()) p.reject(new Error('connection closed'));
        this.pending.clear();
        resolve();
      }),
    );
  }

  /** A client over an already-connected socket (e.g. a TLS socket after STARTTLS). */
  static wrap(socket: net.Socket): RawClient {
    return new RawClient(socket);
  }

  static connect(target: Target): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket =
        'path' in target ? net.connect(target.path) : net.connect(target.port, target.host ?? '127.0.0.1');
      socket.once('connect', () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  /** Connects, checks the greeting and sends client flags (fixed newstyle + no zeroes). */
  static async open(
    target: Target,
    clientFlags = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES,
  ): Promise<RawClient> {
    const client = await RawClient.connect(target);
    decodeGreeting(await client.queue.read(P.SERVER_GREETING_BYTES));
    client.socket.write(encodeU32(clientFlags));
    return client;
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    this.socket.write(encodeOption(option, data));
  }

  async readOptionReply(): Promise<OptionReply> {
    const header = decodeOptionReplyHeader(await this.queue.read(P.OPTION_REPLY_HEADER_BYTES));
    const data = Buffer.from(await this.queue.read(header.length));
    return { type: header.type, data };
  }

  /** Sends an option and collects replies up to the final ACK or error. */
  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(option, data);
    const replies: OptionReply[] = [];
    for (;;) {
      const reply = await this.readOptionReply();
      replies.push(reply);
      if (reply.type === P.NBD_REP_ACK || P.isOptionError(reply.type)) return replies;
    }
  }

  static infoRequest(name: string, infos: number[] = []): Buffer {
    return encodeInfoRequest(name, infos);
  }

  static metaRequest(name: string, queries: string[]): Buffer {
    return encodeMetaContextRequest(name, queries);
  }

  /**
   * Full handshake to transmission: optional structured replies / extended headers / meta
   * contexts, then GO. Returns export size, flags and context ids by name.
   */
  async go(
    name: string,
    options: { structured?: boolean; extended?: boolean; contexts?: string[] } = {},
  ): Promise<{ size: number; flags: number; contexts: Map<string, number> }> {
    if (options.extended) {
      const [reply] = await this.option(P.NBD_OPT_EXTENDED_HEADERS);
      if (reply.type !== P.NBD_REP_ACK) throw new Error(`EXTENDED_HEADERS refused: ${reply.type}`);
      this.extended = true;
      this.structured = true;
    } else if (options.structured) {
      const [reply] = await this.option(P.NBD_OPT_STRUCTURED_REPLY);
      if (reply.type !== P.NBD_REP_ACK) throw new Error(`STRUCTURED_REPLY refused: ${reply.type}`);
      this.structured = true;
    }
    const contexts = new Map<string, number>();
    if (options.contexts) {
      for (const reply of await this.option(
        P.NBD_OPT_SET_META_CONTEXT,
        RawClient.metaRequest(name, options.contexts),
      )) {
        if (reply.type === P.NBD_REP_META_CONTEXT) {
          const { id, name: context } = decodeMetaContextReply(reply.data);
          contexts.set(context, id);
        } else if (reply.type !== P.NBD_REP_ACK) {
          throw new Error(`SET_META_CONTEXT failed: 0x${reply.type.toString(16)}`);
        }
      }
    }
    const replies = await this.option(P.NBD_OPT_GO, RawClient.infoRequest(name, [P.NBD_INFO_BLOCK_SIZE]));
    const last = replies[replies.length - 1];
    if (last.type !== P.NBD_REP_ACK) {
      throw new Error(`GO failed: 0x${last.type.toString(16)} ${last.data.toString()}`);
    }
    const infos = replies.filter((r) => r.type === P.NBD_REP_INFO).map((r) => decodeInfo(r.data));
    const exportInfo = infos.find((info) => info?.kind === 'export');
    if (exportInfo?.kind !== 'export') throw new Error('no NBD_INFO_EXPORT');
    this.startTransmission();
    return { size: exportInfo.sizeBytes, flags: exportInfo.transmissionFlags, contexts };
  }

  startTransmission(): void {
    this.transmitting = true;
    this.parseReplies();
  }

  /** Sends one request; resolves with its complete reply. */
  request(
    type: number,
    offset: number,
    length: number,
    options: { flags?: number; payload?: Buffer } = {},
  ): Promise<Reply> {
    const cookie = this.nextCookie++;
    let flags = options.flags ?? 0;
    const payload = options.payload;
    if (this.extended && payload) flags |= P.NBD_CMD_FLAG_PAYLOAD_LEN;
    const header = encodeRequest(
      this.extended,
      flags,
      type,
      cookie,
      offset,
      payload ? payload.length : length,
    );
    const promise = new Promise<Reply>((resolve, reject) => {
      if (type !== P.NBD_CMD_DISC) {
        this.pending.set(cookie, { type, offset, length, resolve, reject, chunks: [], error: 0 });
      } else {
        resolve({ error: 0, chunks: [] });
      }
    });
    this.socket.write(payload ? Buffer.concat([header, payload]) : header);
    return promise;
  }

  read(offset: number, length: number, flags = 0): Promise<Reply> {
    return this.request(P.NBD_CMD_READ, offset, length, { flags });
  }

  writeData(offset: number, data: Buffer, flags = 0): Promise<Reply> {
    return this.request(P.NBD_CMD_WRITE, offset, data.length, { flags, payload: data });
  }

  disconnect(): void {
    void this.request(P.NBD_CMD_DISC, 0, 0);
  }

  close(): void {
    this.socket.destroy();
  }

  private parseReplies(): void {
    const q = this.queue;
    const header = this.header;
    for (;;) {
      if (q.length < P.MAGIC_BYTES) return;
      q.peek(P.MAGIC_BYTES);
      const magic = q.frame.readUInt32BE(q.frameOffset);
      const headerBytes = replyHeaderBytes(magic);
      if (headerBytes === undefined) throw new Error(`bad reply magic 0x${magic.toString(16)}`);
      if (q.length < headerBytes) return;
      q.peek(headerBytes);
      decodeReplyHeader(q.frame, q.frameOffset, header);
      const pending = this.pending.get(header.cookie);
      if (!pending) throw new Error(`${header.kind} reply for unknown cookie ${header.cookie}`);
      if (header.kind === 'simple') {
        const dataBytes = pending.type === P.NBD_CMD_READ && header.error === 0 ? pending.length : 0;
        if (q.length < headerBytes + dataBytes) return;
        q.skip(headerBytes);
        const data = dataBytes > 0 ? Buffer.from(q.take(dataBytes)) : undefined;
        this.pending.delete(header.cookie);
        pending.resolve({ error: header.error, data, chunks: [] });
        continue;
      }
      const { flags, type, length } = header;
      if (q.length < headerBytes + length) return;
      q.skip(headerBytes);
      const data = Buffer.from(q.take(length));
      const offset = header.kind === 'extended' ? header.offset : undefined;
      pending.chunks.push({ flags, type, offset, data });
      if (isErrorChunk(type)) pending.error = data.readUInt32BE(0);
      if (flags & P.NBD_REPLY_FLAG_DONE) {
        this.pending.delete(header.cookie);
        pending.resolve({ error: pending.error, data: assemble(pending), chunks: pending.chunks });
      }
    }
  }
}

/** Builds READ content from OFFSET_DATA / OFFSET_HOLE chunks. */
function assemble(pending: Pending): Buffer | undefined {
  if (pending.type !== P.NBD_CMD_READ || pending.error) return undefined;
  const out = Buffer.alloc(pending.length, 0xee);
  for (const chunk of pending.chunks) {
    if (chunk.type === P.NBD_REPLY_TYPE_OFFSET_DATA) {
      chunk.data.copy(out, readU64(chunk.data, 0) - pending.offset, 8);
    } else if (chunk.type === P.NBD_REPLY_TYPE_OFFSET_HOLE) {
      const start = readU64(chunk.data, 0) - pending.offset;
      out.fill(0, start, start + chunk.data.readUInt32BE(8));
    }
  }
  return out;
}

/** Parses a BLOCK_STATUS(_EXT) chunk into (length, flags) pairs. */
export function parseBlockStatus(chunk: Chunk): { contextId: number; extents: Array<[number, number]> } {
  const { contextId, extents } = decodeBlockStatus(chunk.type, chunk.data);
  return { contextId, extents: extents.map((e): [number, number] => [e.length, e.flags]) };
}
