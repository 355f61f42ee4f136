// A small NBD client for tests: speaks the handshake and transmission frames directly, so
// tests can send exactly what they want (extended headers, bad frames, pipelined requests).
import net from 'node:net';
import { ByteQueue } from '../../src/nbd/byte-queue';
import * as P from '../../src/nbd/protocol';

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

function u64(buffer: Buffer, at: number): number {
  return buffer.readUInt32BE(at) * 0x100000000 + buffer.readUInt32BE(at + 4);
}

function putU64(buffer: Buffer, value: number, at: number): void {
  buffer.writeUInt32BE(Math.floor(value / 0x100000000), at);
  buffer.writeUInt32BE(value >>> 0, at + 4);
}

export class RawClient {
  readonly queue = new ByteQueue();
  structured = false;
  extended = false;
  private nextCookie = 1;
  private readonly pending = new Map<number, Pending>();
  private transmitting = false;
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
  static async open(target: Target, clientFlags = 3): Promise<RawClient> {
    const client = await RawClient.connect(target);
    const greeting = await client.queue.read(18);
    if (greeting.toString('latin1', 0, 16) !== 'NBDMAGICIHAVEOPT') throw new Error('bad greeting');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(clientFlags, 0);
    client.socket.write(flags);
    return client;
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    const header = Buffer.alloc(16);
    header.write('IHAVEOPT', 0, 'latin1');
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([header, data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const header = await this.queue.read(20);
    if (
      header.readUInt32BE(0) !== P.OPTION_REPLY_MAGIC_HI ||
      header.readUInt32BE(4) !== P.OPTION_REPLY_MAGIC_LO
    ) {
      throw new Error('bad option reply magic');
    }
    const length = header.readUInt32BE(16);
    const data = Buffer.from(await this.queue.read(length));
    return { type: header.readUInt32BE(12), data };
  }

  /** Sends an option and collects replies up to the final ACK or error. */
  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(option, data);
    const replies: OptionReply[] = [];
    for (;;) {
      const reply = await this.readOptionReply();
      replies.push(reply);
      if (reply.type === P.NBD_REP_ACK || reply.type >= 0x80000000) return replies;
    }
  }

  static infoRequest(name: string, infos: number[] = []): Buffer {
    const nameBytes = Buffer.from(name, 'utf8');
    const data = Buffer.alloc(4 + nameBytes.length + 2 + 2 * infos.length);
    data.writeUInt32BE(nameBytes.length, 0);
    nameBytes.copy(data, 4);
    data.writeUInt16BE(infos.length, 4 + nameBytes.length);
    infos.forEach((info, i) => data.writeUInt16BE(info, 6 + nameBytes.length + 2 * i));
    return data;
  }

  static metaRequest(name: string, queries: string[]): Buffer {
    const parts: Buffer[] = [];
    const nameBytes = Buffer.from(name, 'utf8');
    const head = Buffer.alloc(4);
    head.writeUInt32BE(nameBytes.length, 0);
    parts.push(head, nameBytes);
    const count = Buffer.alloc(4);
    count.writeUInt32BE(queries.length, 0);
    parts.push(count);
    for (const query of queries) {
      const q = Buffer.from(query, 'utf8');
      const len = Buffer.alloc(4);
      len.writeUInt32BE(q.length, 0);
      parts.push(len, q);
    }
    return Buffer.concat(parts);
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
          contexts.set(reply.data.toString('utf8', 4), reply.data.readUInt32BE(0));
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
    const exportInfo = replies.find((r) => r.type === P.NBD_REP_INFO && r.data.readUInt16BE(0) === 0);
    if (!exportInfo) throw new Error('no NBD_INFO_EXPORT');
    this.startTransmission();
    return { size: u64(exportInfo.data, 2), flags: exportInfo.data.readUInt16BE(10), contexts };
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
    const header = Buffer.alloc(this.extended ? 32 : 28);
    header.writeUInt32BE(this.extended ? P.NBD_EXTENDED_REQUEST_MAGIC : P.NBD_REQUEST_MAGIC, 0);
    header.writeUInt16BE(flags, 4);
    header.writeUInt16BE(type, 6);
    header.writeUInt32BE(0, 8);
    header.writeUInt32BE(cookie, 12);
    putU64(header, offset, 16);
    if (this.extended) putU64(header, payload ? payload.length : length, 24);
    else header.writeUInt32BE(payload ? payload.length : length, 24);
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
    for (;;) {
      if (q.length < 4) return;
      q.peek(4);
      const magic = q.frame.readUInt32BE(q.frameOffset);
      if (magic === P.NBD_SIMPLE_REPLY_MAGIC) {
        if (q.length < 16) return;
        q.peek(16);
        const error = q.frame.readUInt32BE(q.frameOffset + 4);
        const cookie = q.frame.readUInt32BE(q.frameOffset + 12);
        const pending = this.pending.get(cookie);
        if (!pending) throw new Error(`simple reply for unknown cookie ${cookie}`);
        const dataBytes = pending.type === P.NBD_CMD_READ && error === 0 ? pending.length : 0;
        if (q.length < 16 + dataBytes) return;
        q.skip(16);
        const data = dataBytes > 0 ? Buffer.from(q.take(dataBytes)) : undefined;
        this.pending.delete(cookie);
        pending.resolve({ error, data, chunks: [] });
        continue;
      }
      const extended = magic === P.NBD_EXTENDED_REPLY_MAGIC;
      if (!extended && magic !== P.NBD_STRUCTURED_REPLY_MAGIC) {
        throw new Error(`bad reply magic 0x${magic.toString(16)}`);
      }
      const headerBytes = extended ? 32 : 20;
      if (q.length < headerBytes) return;
      q.peek(headerBytes);
      const f = q.frame;
      const at = q.frameOffset;
      const flags = f.readUInt16BE(at + 4);
      const type = f.readUInt16BE(at + 6);
      const cookie = f.readUInt32BE(at + 12);
      const offset = extended ? u64(f, at + 16) : undefined;
      const length = extended ? u64(f, at + 24) : f.readUInt32BE(at + 16);
      if (q.length < headerBytes + length) return;
      q.skip(headerBytes);
      const data = Buffer.from(q.take(length));
      const pending = this.pending.get(cookie);
      if (!pending) throw new Error(`chunk for unknown cookie ${cookie}`);
      pending.chunks.push({ flags, type, offset, data });
      if (type >= 0x8000) pending.error = data.readUInt32BE(0);
      if (flags & P.NBD_REPLY_FLAG_DONE) {
        this.pending.delete(cookie);
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
      chunk.data.copy(out, u64(chunk.data, 0) - pending.offset, 8);
    } else if (chunk.type === P.NBD_REPLY_TYPE_OFFSET_HOLE) {
      const start = u64(chunk.data, 0) - pending.offset;
      out.fill(0, start, start + chunk.data.readUInt32BE(8));
    }
  }
  return out;
}

/** Parses a BLOCK_STATUS(_EXT) chunk into (length, flags) pairs. */
export function parseBlockStatus(chunk: Chunk): { contextId: number; extents: Array<[number, number]> } {
  const extents: Array<[number, number]> = [];
  const contextId = chunk.data.readUInt32BE(0);
  if (chunk.type === P.NBD_REPLY_TYPE_BLOCK_STATUS_EXT) {
    const count = chunk.data.readUInt32BE(4);
    for (let i = 0; i < count; i++) extents.push([u64(chunk.data, 8 + 16 * i), u64(chunk.data, 16 + 16 * i)]);
  } else {
    for (let at = 4; at < chunk.data.length; at += 8) {
      extents.push([chunk.data.readUInt32BE(at), chunk.data.readUInt32BE(at + 4)]);
    }
  }
  return { contextId, extents };
}
