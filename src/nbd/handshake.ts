// Fixed-newstyle option haggling, from the server greeting to EXPORT_NAME/GO (or ABORT).
import type winston from 'winston';
import type { ClientIdentity, ExportDefinition, ExportRegistry } from './exports';
import { ProtocolError } from './errors';
import { contextNames, matchContexts, type SelectedContext } from './meta-context';
import * as P from './protocol';
import {
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContextReply,
  encodeOptionReply,
  encodeServerReply,
} from './wire';
import type { TlsMode } from './tls';

/** The socket side of the handshake, so this module never touches sockets or TLS itself. */
export interface HandshakeIo {
  read(bytes: number): Promise<Buffer>;
  /** Discards `bytes` bytes without buffering them all. */
  discard(bytes: number): Promise<void>;
  write(data: Buffer): void;
  /** Sends `ack` in clear, then runs the TLS handshake; resolves with the peer's identity. */
  startTls(ack: Buffer): Promise<ClientIdentity>;
}

export interface HandshakeSettings {
  tlsMode: TlsMode;
  isShuttingDown(): boolean;
}

/** What the client and server agreed on; transmission runs on this. */
export interface Session {
  export: ExportDefinition;
  readOnly: boolean;
  sizeBytes: number;
  transmissionFlags: number;
  structuredReplies: boolean;
  extendedHeaders: boolean;
  metaContexts: SelectedContext[];
  identity: ClientIdentity;
  /** How the session began, for the connection log line. */
  via: 'GO' | 'EXPORT_NAME';
}

/** Options carrying more than this are refused without being buffered (names are ≤ 4 KiB). */
export const MAX_OPTION_BYTES = 64 * 1024;

const INFO_REQUEST_MIN_BYTES = 6;
const CLIENT_FLAGS_BYTES = 4;
const MAX_WARNINGS_PER_CONNECTION = 3;

/** Transmission flags for an export given what has been negotiated so far. */
export function transmissionFlags(readOnly: boolean, structuredReplies: boolean): number {
  let flags = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_FUA;
  flags |= P.NBD_FLAG_CAN_MULTI_CONN | P.NBD_FLAG_SEND_CACHE;
  if (readOnly) flags |= P.NBD_FLAG_READ_ONLY;
  else flags |= P.NBD_FLAG_SEND_TRIM | P.NBD_FLAG_SEND_WRITE_ZEROES | P.NBD_FLAG_SEND_FAST_ZERO;
  if (structuredReplies) flags |= P.NBD_FLAG_SEND_DF;
  return flags;
}

export function isReadOnly(definition: ExportDefinition): boolean {
  return definition.readOnly === true || definition.device.readOnly;
}

/** An option's request could not be parsed; answered with ERR_INVALID, haggling goes on. */
class InvalidOption extends Error {}

class OptionData {
  private position = 0;
  constructor(private readonly data: Buffer) {}
  get remaining(): number {
    return this.data.length - this.position;
  }
  u16(): number {
    if (this.remaining < 2) throw new InvalidOption('option data too short');
    const value = this.data.readUInt16BE(this.position);
    this.position += 2;
    return value;
  }
  u32(): number {
    if (this.remaining < 4) throw new InvalidOption('option data too short');
    const value = this.data.readUInt32BE(this.position);
    this.position += 4;
    return value;
  }
  string(bytes: number): string {
    if (bytes > this.remaining) throw new InvalidOption('string overruns option data');
    if (bytes > P.MAX_STRING_BYTES) throw new InvalidOption('string longer than 4096 bytes');
    const slice = this.data.subarray(this.position, this.position + bytes);
    this.position += bytes;
    if (slice.includes(0)) throw new InvalidOption('string contains NUL');
    return slice.toString('utf8');
  }
}

export class Handshake {
  private noZeroes = false;
  private tlsActive = false;
  private identity: ClientIdentity = { tls: false, certNames: [] };
  private structuredReplies = false;
  private extendedHeaders = false;
  /** The last SET_META_CONTEXT: which export it named and what it selected. */
  private metaExport: ExportDefinition | undefined;
  private metaContexts: SelectedContext[] = [];
  private warnings = 0;

  constructor(
    private readonly io: HandshakeIo,
    private readonly registry: ExportRegistry,
    private readonly settings: HandshakeSettings,
    private readonly log: winston.Logger,
  ) {}

  /** Resolves with the session, or undefined when the client aborted. Throws ProtocolError. */
  async run(): Promise<Session | undefined> {
    this.io.write(encodeGreeting(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES));

    const clientFlags = (await this.io.read(CLIENT_FLAGS_BYTES)).readUInt32BE(0);
    if (clientFlags & ~(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES)) {
      throw new ProtocolError(`unknown client flags 0x${clientFlags.toString(16)}`);
    }
    if (!(clientFlags & P.NBD_FLAG_C_FIXED_NEWSTYLE)) {
      throw new ProtocolError('client does not speak fixed newstyle');
    }
    this.noZeroes = (clientFlags & P.NBD_FLAG_C_NO_ZEROES) !== 0;

    for (;;) {
      const header = decodeOptionHeader(await this.io.read(P.OPTION_HEADER_BYTES));
      if (!header) throw new ProtocolError('bad option magic');
      const { option, length } = header;
      if (length > MAX_OPTION_BYTES) {
        await this.io.discard(length);
        if (option === P.NBD_OPT_EXPORT_NAME) throw new ProtocolError('EXPORT_NAME too long');
        this.error(option, P.NBD_REP_ERR_TOO_BIG, `option data over ${MAX_OPTION_BYTES} bytes`);
        continue;
      }
      const data = await this.io.read(length);
      const session = await this.handleOption(option, data);
      if (session !== 'continue') return session;
    }
  }

  private async handleOption(option: number, data: Buffer): Promise<Session | undefined | 'continue'> {
    if (option === P.NBD_OPT_ABORT) {
      this.reply(option, P.NBD_REP_ACK);
      return undefined;
    }
    if (this.settings.tlsMode === 'required' && !this.tlsActive && option !== P.NBD_OPT_STARTTLS) {
      if (option === P.NBD_OPT_EXPORT_NAME) throw new ProtocolError('EXPORT_NAME before STARTTLS');
      this.error(option, P.NBD_REP_ERR_TLS_REQD, 'TLS is required');
      return 'continue';
    }
    if (this.settings.isShuttingDown()) {
      if (option === P.NBD_OPT_EXPORT_NAME) throw new ProtocolError('server shutting down');
      this.error(option, P.NBD_REP_ERR_SHUTDOWN, 'server shutting down');
      return 'continue';
    }
    try {
      switch (option) {
        case P.NBD_OPT_EXPORT_NAME:
          return this.exportName(data);
        case P.NBD_OPT_LIST:
          this.list(data);
          return 'continue';
        case P.NBD_OPT_STARTTLS:
          await this.startTls(data);
          return 'continue';
        case P.NBD_OPT_INFO:
        case P.NBD_OPT_GO:
          return this.infoOrGo(option, data);
        case P.NBD_OPT_STRUCTURED_REPLY:
          this.structuredReply(data);
          return 'continue';
        case P.NBD_OPT_EXTENDED_HEADERS:
          this.extendedHeadersOption(data);
          return 'continue';
        case P.NBD_OPT_LIST_META_CONTEXT:
        case P.NBD_OPT_SET_META_CONTEXT:
          this.metaContext(option, data);
          return 'continue';
        default:
          this.error(option, P.NBD_REP_ERR_UNSUP, `option ${option} not supported`);
          return 'continue';
      }
    } catch (error) {
      if (!(error instanceof InvalidOption)) throw error;
      this.warn('invalid option data', { option: P.optionName(option), reason: error.message });
      this.error(option, P.NBD_REP_ERR_INVALID, error.message);
      return 'continue';
    }
  }

  private exportName(data: Buffer): Session {
    if (this.extendedHeaders) throw new ProtocolError('EXPORT_NAME after EXTENDED_HEADERS');
    if (data.length > P.MAX_STRING_BYTES || data.includes(0)) throw new ProtocolError('bad EXPORT_NAME');
    const lookup = this.registry.lookup(data.toString('utf8'), this.identity);
    if (lookup.kind !== 'ok') throw new ProtocolError(`EXPORT_NAME refused: ${lookup.kind}`);
    const session = this.session(lookup.export, 'EXPORT_NAME');
    this.io.write(encodeExportNameReply(session.sizeBytes, session.transmissionFlags, !this.noZeroes));
    return session;
  }

  private list(data: Buffer): void {
    if (data.length !== 0) throw new InvalidOption('LIST takes no data');
    for (const definition of this.registry.listVisible(this.identity)) {
      const payload = encodeServerReply(definition.name, definition.description ?? '');
      this.reply(P.NBD_OPT_LIST, P.NBD_REP_SERVER, payload);
    }
    this.reply(P.NBD_OPT_LIST, P.NBD_REP_ACK);
  }

  private async startTls(data: Buffer): Promise<void> {
    if (data.length !== 0) throw new InvalidOption('STARTTLS takes no data');
    if (this.settings.tlsMode === 'off') {
      this.error(P.NBD_OPT_STARTTLS, P.NBD_REP_ERR_UNSUP, 'TLS is not configured');
      return;
    }
    if (this.tlsActive) {
      this.error(P.NBD_OPT_STARTTLS, P.NBD_REP_ERR_INVALID, 'TLS already active');
      return;
    }
    this.identity = await this.io.startTls(encodeOptionReply(P.NBD_OPT_STARTTLS, P.NBD_REP_ACK));
    this.tlsActive = true;
    // Everything negotiated in clear is forgotten, so a man in the middle can't plant it.
    this.structuredReplies = false;
    this.extendedHeaders = false;
    this.metaExport = undefined;
    this.metaContexts = [];
  }

  private infoOrGo(option: number, data: Buffer): Session | 'continue' {
    if (data.length < INFO_REQUEST_MIN_BYTES) throw new InvalidOption('INFO/GO data too short');
    const reader = new OptionData(data);
    const nameBytes = reader.u32();
    if (nameBytes > data.length - INFO_REQUEST_MIN_BYTES) throw new InvalidOption('name overruns option');
    const name = reader.string(nameBytes);
    const count = reader.u16();
    if (reader.remaining !== count * 2) throw new InvalidOption('information request count mismatch');
    const requested = new Set<number>();
    for (let i = 0; i < count; i++) requested.add(reader.u16());

    const lookup = this.registry.lookup(name, this.identity);
    if (lookup.kind === 'unknown') {
      this.error(option, P.NBD_REP_ERR_UNKNOWN, 'no such export');
      return 'continue';
    }
    if (lookup.kind === 'denied') {
      this.warn('export access denied', { option: P.optionName(option), reason: lookup.reason });
      this.error(option, P.NBD_REP_ERR_POLICY, lookup.reason);
      return 'continue';
    }
    const definition = lookup.export;
    const session = this.session(definition, 'GO');

    this.reply(option, P.NBD_REP_INFO, encodeInfoExport(session.sizeBytes, session.transmissionFlags));
    if (requested.has(P.NBD_INFO_NAME)) {
      // Echo the name as asked: it is the client's own secret, and reconnecting with it works.
      this.reply(option, P.NBD_REP_INFO, encodeInfoString(P.NBD_INFO_NAME, name));
    }
    if (requested.has(P.NBD_INFO_DESCRIPTION) && definition.description) {
      this.reply(option, P.NBD_REP_INFO, encodeInfoString(P.NBD_INFO_DESCRIPTION, definition.description));
    }
    // Always sent: clients that did not ask may ignore it, and we cope with their defaults.
    const blockSize = encodeInfoBlockSize(P.MIN_BLOCK_BYTES, P.PREFERRED_BLOCK_BYTES, P.MAX_PAYLOAD_BYTES);
    this.reply(option, P.NBD_REP_INFO, blockSize);
    this.reply(option, P.NBD_REP_ACK);
    return option === P.NBD_OPT_GO ? session : 'continue';
  }

  private structuredReply(data: Buffer): void {
    if (data.length !== 0) throw new InvalidOption('STRUCTURED_REPLY takes no data');
    if (this.extendedHeaders) {
      this.error(P.NBD_OPT_STRUCTURED_REPLY, P.NBD_REP_ERR_EXT_HEADER_REQD, 'extended headers already on');
    } else if (this.structuredReplies) {
      this.error(P.NBD_OPT_STRUCTURED_REPLY, P.NBD_REP_ERR_INVALID, 'structured replies already on');
    } else {
      this.structuredReplies = true;
      this.reply(P.NBD_OPT_STRUCTURED_REPLY, P.NBD_REP_ACK);
    }
  }

  private extendedHeadersOption(data: Buffer): void {
    if (data.length !== 0) throw new InvalidOption('EXTENDED_HEADERS takes no data');
    if (this.extendedHeaders) {
      this.error(P.NBD_OPT_EXTENDED_HEADERS, P.NBD_REP_ERR_INVALID, 'extended headers already on');
      return;
    }
    this.extendedHeaders = true;
    this.structuredReplies = true;
    this.reply(P.NBD_OPT_EXTENDED_HEADERS, P.NBD_REP_ACK);
  }

  private metaContext(option: number, data: Buffer): void {
    const isSet = option === P.NBD_OPT_SET_META_CONTEXT;
    if (isSet) {
      // A SET replaces the previous selection even when it fails.
      this.metaExport = undefined;
      this.metaContexts = [];
    }
    if (!this.structuredReplies) {
      this.error(option, P.NBD_REP_ERR_INVALID, 'negotiate structured replies first');
      return;
    }
    const reader = new OptionData(data);
    const name = reader.string(reader.u32());
    const queryCount = reader.u32();
    const queries: string[] = [];
    for (let i = 0; i < queryCount; i++) queries.push(reader.string(reader.u32()));
    if (reader.remaining !== 0) throw new InvalidOption('trailing bytes after meta context queries');

    const lookup = this.registry.lookup(name, this.identity);
    if (lookup.kind === 'unknown') {
      this.error(option, P.NBD_REP_ERR_UNKNOWN, 'no such export');
      return;
    }
    if (lookup.kind === 'denied') {
      this.error(option, P.NBD_REP_ERR_POLICY, lookup.reason);
      return;
    }
    const available = contextNames(lookup.export);
    const chosen = new Set<string>();
    if (queries.length === 0) {
      if (!isSet) available.forEach((context) => chosen.add(context));
    } else {
      for (const query of queries) matchContexts(available, query, !isSet).forEach((c) => chosen.add(c));
    }
    const selected: SelectedContext[] = [];
    for (const context of chosen) {
      const id = isSet ? selected.length + 1 : 0;
      selected.push({ id, name: context });
      this.reply(option, P.NBD_REP_META_CONTEXT, encodeMetaContextReply(id, context));
    }
    if (isSet) {
      this.metaExport = lookup.export;
      this.metaContexts = selected;
    }
    this.reply(option, P.NBD_REP_ACK);
  }

  private session(definition: ExportDefinition, via: Session['via']): Session {
    const readOnly = isReadOnly(definition);
    return {
      export: definition,
      readOnly,
      sizeBytes: definition.device.sizeBytes,
      transmissionFlags: transmissionFlags(readOnly, this.structuredReplies),
      structuredReplies: this.structuredReplies,
      extendedHeaders: this.extendedHeaders,
      // Block status is only allowed on the export the last SET_META_CONTEXT named.
      metaContexts: this.metaExport === definition ? this.metaContexts : [],
      identity: this.identity,
      via,
    };
  }

  /** Warns for the first few problems of a connection only, so one client can't flood the log. */
  private warn(message: string, context: Record<string, unknown>): void {
    this.warnings++;
    if (this.warnings <= MAX_WARNINGS_PER_CONNECTION) this.log.warn(message, context);
    else this.log.debug(message, context);
  }

  private reply(option: number, type: number, payload?: Buffer): void {
    this.io.write(encodeOptionReply(option, type, payload));
  }

  private error(option: number, type: number, message: string): void {
    this.reply(option, type, Buffer.from(message, 'utf8'));
  }
}
