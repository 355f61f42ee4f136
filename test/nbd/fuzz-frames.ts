// Hostile NBD traffic from a seed: frames (each named by its kind) and the scripts of whole
// connections built from them. Pure generation, no sockets. The CI fuzz test and the long
// campaign (test/stress/nbd-fuzz.ts) both draw from here, so they exercise the same grammar.
import * as P from '../../src/nbd/protocol';
import {
  encodeOption,
  encodeRequest,
  encodeU32,
  REQUEST_COOKIE_AT,
  REQUEST_LENGTH_AT,
  REQUEST_OFFSET_AT,
  requestBytes,
} from '../../src/nbd/wire';
import { seededRandom } from '../helpers/random';
import { RawClient } from './raw-client';

export type Rand = ReturnType<typeof seededRandom>;

/** One frame as sent, named for the per-kind counts (e.g. `opt:GO:lying-name`, `ext:READ`). */
export interface Frame {
  kind: string;
  bytes: Buffer;
}

/** An export the fuzzers may open; `protect` is a byte range hostile writes must never touch. */
export interface FuzzExport {
  name: string;
  sizeBytes: number;
  readOnly: boolean;
  /** Meta contexts it offers beyond base:allocation. */
  contexts: string[];
  protect?: { start: number; end: number };
}

/** What one hostile connection does: its frames, where it cuts the stream, how it leaves. */
export interface HostileScript {
  scenario: string;
  frames: Frame[];
  /** Bytes of the concatenated frames actually sent; less than all = abrupt close mid-stream. */
  cutAt: number;
  /** Never read replies: the server must stop reading instead of buffering without bound. */
  readReplies: boolean;
  /** Send the stream in small pieces with pauses (a slow client) instead of one write. */
  trickle: boolean;
  lingerMs: number;
  close: 'destroy' | 'end';
}

export type Mode = 'simple' | 'structured' | 'extended';

const NOISE_TABLE_BYTES = 1 << 20;
let noiseTable: Buffer | undefined;

/** Pseudo-random bytes chosen by the seed (a slice of a fixed table: fast and replayable). */
export function noise(rand: Rand, bytes: number): Buffer {
  if (!noiseTable) {
    noiseTable = Buffer.alloc(NOISE_TABLE_BYTES);
    const fill = seededRandom(0x6e6264);
    for (let at = 0; at < NOISE_TABLE_BYTES; at += 4) noiseTable.writeUInt32LE(fill.int(2 ** 32), at);
  }
  const out = Buffer.allocUnsafe(bytes);
  for (let at = 0; at < bytes;) {
    const from = rand.int(NOISE_TABLE_BYTES);
    at += noiseTable.copy(out, at, from, Math.min(NOISE_TABLE_BYTES, from + bytes - at));
  }
  return out;
}

export function clientFlags(rand: Rand): Frame {
  if (rand.next() < 0.03) return { kind: 'flags:random', bytes: noise(rand, 4) };
  return { kind: 'flags', bytes: encodeU32(rand.next() < 0.2 ? P.NBD_FLAG_C_FIXED_NEWSTYLE : 3) };
}

const NAMES = ['', 'nope', 'x/y', '\u00e9', 'a'.repeat(300)];

function exportName(rand: Rand, exports: readonly FuzzExport[]): string {
  return rand.next() < 0.7 ? rand.pick([...exports]).name : rand.pick(NAMES);
}

/** INFO/GO data, well formed or with one lie in it. */
function infoData(rand: Rand, exports: readonly FuzzExport[]): { data: Buffer; lie: string } {
  const infos = Array.from({ length: rand.int(5) }, () => rand.int(6));
  let data = RawClient.infoRequest(exportName(rand, exports), infos);
  const lie = rand.pick(['none', 'none', 'name-length', 'count', 'truncated', 'nul', 'long-name']);
  if (lie === 'name-length') data.writeUInt32BE(rand.int(0xffffffff), 0);
  else if (lie === 'count') data.writeUInt16BE(rand.int(0x10000), data.length - 2 * infos.length - 2);
  else if (lie === 'truncated') data = data.subarray(0, rand.int(data.length));
  else if (lie === 'nul') data = RawClient.infoRequest('di\0sk', infos);
  else if (lie === 'long-name') data = RawClient.infoRequest('n'.repeat(4097), infos);
  return { data, lie };
}

const QUERIES = [
  'base:allocation',
  'base:',
  'base:nothing',
  'thinpool:',
  'thinpool:delta:',
  'x',
  '',
  'qemu:',
];

/** LIST/SET_META_CONTEXT data, well formed or with one lie in it. */
function metaData(rand: Rand, exports: readonly FuzzExport[]): { data: Buffer; lie: string } {
  const target = rand.pick([...exports]);
  const pool = [...QUERIES, ...target.contexts, 'thinpool:delta:999'];
  const queries = Array.from({ length: rand.int(4) }, () => rand.pick(pool));
  const name = rand.next() < 0.8 ? target.name : rand.pick(NAMES);
  let data = RawClient.metaRequest(name, queries);
  const countAt = 4 + Buffer.byteLength(name);
  const lie = rand.pick(['none', 'none', 'name-length', 'query-count', 'query-length', 'truncated', 'many']);
  if (lie === 'name-length') data.writeUInt32BE(rand.int(0xffffffff), 0);
  else if (lie === 'query-count') data.writeUInt32BE(rand.int(0xffffffff), countAt);
  else if (lie === 'query-length' && queries.length > 0)
    data.writeUInt32BE(rand.int(0xffffffff), countAt + 4);
  else if (lie === 'truncated') data = data.subarray(0, rand.int(data.length));
  else if (lie === 'many')
    data = RawClient.metaRequest(
      name,
      Array.from({ length: 2000 }, () => rand.pick(pool)),
    );
  return { data, lie };
}

const HAGGLE_OPTIONS = [
  P.NBD_OPT_LIST,
  P.NBD_OPT_PEEK_EXPORT,
  P.NBD_OPT_STARTTLS,
  P.NBD_OPT_INFO,
  P.NBD_OPT_GO,
  P.NBD_OPT_STRUCTURED_REPLY,
  P.NBD_OPT_LIST_META_CONTEXT,
  P.NBD_OPT_SET_META_CONTEXT,
  P.NBD_OPT_EXTENDED_HEADERS,
];

/**
 * An option during haggling, valid or malformed. GO only comes with data it must refuse, so
 * haggling goes on; `enables` says which reply mode a well-formed negotiation option turns on.
 */
export function randomOption(rand: Rand, exports: readonly FuzzExport[]): Frame & { enables?: Mode } {
  const frame = optionOfShape(rand, exports);
  // An empty STRUCTURED_REPLY or EXTENDED_HEADERS is accepted, whatever shape made it.
  const code = frame.bytes.readUInt32BE(8);
  if (frame.bytes.length === P.OPTION_HEADER_BYTES && code === P.NBD_OPT_EXTENDED_HEADERS) {
    return { ...frame, enables: 'extended' };
  }
  if (frame.bytes.length === P.OPTION_HEADER_BYTES && code === P.NBD_OPT_STRUCTURED_REPLY) {
    return { ...frame, enables: 'structured' };
  }
  return frame;
}

function optionOfShape(rand: Rand, exports: readonly FuzzExport[]): Frame {
  const roll = rand.next();
  const code =
    roll < 0.85
      ? rand.pick(HAGGLE_OPTIONS)
      : roll < 0.93
        ? 12 + rand.int(1000)
        : 0x80000000 + rand.int(1 << 30);
  const name = code in NAMED_OPTIONS ? P.optionName(code) : 'unknown';
  const shape = rand.int(6);
  if (shape === 0 && code !== P.NBD_OPT_GO && code !== P.NBD_OPT_INFO) {
    return { kind: `opt:${name}:empty`, bytes: encodeOption(code, Buffer.alloc(0)) };
  }
  if (shape === 1) {
    return { kind: `opt:${name}:noise`, bytes: encodeOption(code, noise(rand, 1 + rand.int(64))) };
  }
  if (shape === 2) {
    // Around the 64 KiB the server buffers: just under is parsed, just over is discarded unread.
    const bytes = rand.pick([4096, 4097, 65535, 65536, 65537, 65536 + rand.int(200_000)]);
    return { kind: `opt:${name}:large`, bytes: encodeOption(code, noise(rand, bytes)) };
  }
  if (shape <= 3 || code === P.NBD_OPT_INFO || code === P.NBD_OPT_GO) {
    const { data, lie } = infoData(rand, exports);
    // A well-formed GO would leave haggling: turn it into INFO, which answers and goes on.
    const sent = code === P.NBD_OPT_GO && lie === 'none' ? P.NBD_OPT_INFO : code;
    const sentName = sent in NAMED_OPTIONS ? P.optionName(sent) : 'unknown';
    return { kind: `opt:${sentName}:info-${lie}`, bytes: encodeOption(sent, data) };
  }
  const { data, lie } = metaData(rand, exports);
  return { kind: `opt:${name}:meta-${lie}`, bytes: encodeOption(code, data) };
}

const NAMED_OPTIONS: Record<number, true> = Object.fromEntries(
  [P.NBD_OPT_EXPORT_NAME, P.NBD_OPT_ABORT, ...HAGGLE_OPTIONS].map((code) => [code, true]),
);

/** A 64-bit value written from a bigint (offsets and lengths go past 2^53). */
function putU64(buffer: Buffer, value: bigint, at: number): void {
  buffer.writeBigUInt64BE(BigInt.asUintN(64, value), at);
}

/** A request header with cookie 0 whose offset and length may be any bigint (a compact length wraps). */
function requestFrame(
  extended: boolean,
  flags: number,
  type: number,
  offset: bigint,
  length: bigint,
): Buffer {
  const header = encodeRequest(extended, flags, type, 0, 0, 0);
  putU64(header, offset, REQUEST_OFFSET_AT);
  if (extended) putU64(header, length, REQUEST_LENGTH_AT);
  else header.writeUInt32BE(Number(length & 0xffffffffn), REQUEST_LENGTH_AT);
  return header;
}

const COMMANDS = [0, 0, 0, 1, 1, 1, 3, 4, 5, 6, 7, 7, 8, 9, 200, 0xffff];

function randomOffset(rand: Rand, size: number): bigint {
  const s = BigInt(size);
  return rand.pick([
    0n,
    BigInt(512 * rand.int(size / 512)),
    BigInt(512 * rand.int(size / 512)),
    s - 512n,
    s,
    s + 512n,
    1n << 32n,
    1n << 40n,
    (1n << 53n) + (1n << 20n),
    (1n << 64n) - 512n,
    BigInt(1 + rand.int(511)),
  ]);
}

function randomLength(rand: Rand, size: number, extended: boolean): bigint {
  const s = BigInt(size);
  const common = [0n, 1n, 511n, 512n, 4096n, BigInt(1 + rand.int(70_000)), 65536n, 65537n, s, s + 512n];
  const huge = [1n << 31n, 0xffffffffn];
  const wide = [1n << 32n, 1n << 33n, (1n << 53n) + 1n, (1n << 64n) - 1n];
  return rand.pick(extended ? [...common, ...huge, ...wide] : [...common, ...huge]);
}

const MUTATING = new Set([P.NBD_CMD_WRITE, P.NBD_CMD_TRIM, P.NBD_CMD_WRITE_ZEROES]);

/**
 * A request in an established session. The server must answer it (perhaps with an error)
 * and keep the connection. Mutating requests never touch the export's protected range.
 */
export function randomRequest(rand: Rand, target: FuzzExport, mode: Mode): Frame {
  const extended = mode === 'extended';
  const type = rand.pick(COMMANDS);
  const flagRoll = rand.next();
  let flags = flagRoll < 0.65 ? 0 : flagRoll < 0.9 ? 1 << rand.int(6) : rand.int(0x10000);
  if (!extended) flags &= ~P.NBD_CMD_FLAG_PAYLOAD_LEN;
  if (extended && type === P.NBD_CMD_WRITE && rand.next() < 0.9) flags |= P.NBD_CMD_FLAG_PAYLOAD_LEN;
  let offset = randomOffset(rand, target.sizeBytes);
  let length = randomLength(rand, target.sizeBytes, extended);
  const carriesPayload = extended ? (flags & P.NBD_CMD_FLAG_PAYLOAD_LEN) !== 0 : type === P.NBD_CMD_WRITE;
  let payload: Buffer | undefined;
  let variant = '';
  if (carriesPayload) {
    // Payloads must be sent in full (a lie here desyncs the stream: see shortWrite).
    length = BigInt(rand.pick([0, 512, 4096, 1 + rand.int(9000), 65536]));
    if (extended && type === P.NBD_CMD_BLOCK_STATUS) {
      // Context-id filter payload, never advertised: consumed, then refused.
      payload = Buffer.alloc(8 + 4 * rand.int(8));
      putU64(payload, BigInt(rand.int(1 << 20)), 0);
      for (let at = 8; at < payload.length; at += 4) payload.writeUInt32BE(rand.int(6), at);
      length = BigInt(payload.length);
      variant = ':context-ids';
    } else payload = noise(rand, Number(length));
  }
  const effect = length > 0n ? length : 1n;
  if (target.protect && MUTATING.has(type)) {
    const { start, end } = target.protect;
    if (offset < BigInt(end) && offset + effect > BigInt(start)) {
      offset = 0n;
      if (!carriesPayload && length > BigInt(start)) length = BigInt(start);
      else if (carriesPayload && length > BigInt(start)) throw new Error('protected range too close to 0');
    }
  }
  const header = requestFrame(extended, flags, type, offset, length);
  header.writeUInt32BE(rand.int(0xffffffff), REQUEST_COOKIE_AT);
  header.writeUInt32BE(rand.int(0xffffffff), REQUEST_COOKIE_AT + 4);
  const kind = `${extended ? 'ext' : mode === 'structured' ? 'sr' : 'compact'}:${P.commandName(type).replace(/^unknown.*/, 'unknown')}${variant}`;
  return { kind, bytes: payload ? Buffer.concat([header, payload]) : header };
}

/** A WRITE whose payload is shorter than its header says: what follows is eaten as payload. */
function shortWrite(rand: Rand, mode: Mode): Frame {
  const extended = mode === 'extended';
  const claimed = 512 * (1 + rand.int(128));
  const flags = extended ? P.NBD_CMD_FLAG_PAYLOAD_LEN : 0;
  const header = requestFrame(extended, flags, P.NBD_CMD_WRITE, 0n, BigInt(claimed));
  return { kind: 'write-short-payload', bytes: Buffer.concat([header, noise(rand, rand.int(claimed))]) };
}

/** Something after which the server may drop the connection (or must, for protocol errors). */
function fatalFrame(rand: Rand, phase: 'haggle' | 'transmission', mode: Mode): Frame {
  const extended = mode === 'extended';
  switch (rand.int(7)) {
    case 0:
      return { kind: 'fatal:noise', bytes: noise(rand, 1 + rand.int(100)) };
    case 1:
      return phase === 'haggle'
        ? {
            kind: 'fatal:export-name-unknown',
            bytes: encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('nope')),
          }
        : {
            kind: 'fatal:wrong-magic',
            bytes: randomRequestWithMagic(
              rand,
              extended ? P.NBD_REQUEST_MAGIC : P.NBD_EXTENDED_REQUEST_MAGIC,
            ),
          };
    case 2: {
      // Payload far over the 32 MiB maximum: the server must hang up, not wait for it.
      const type = extended ? rand.pick([0, 1, 4, 7]) : P.NBD_CMD_WRITE;
      const length = extended
        ? rand.pick([(1n << 25n) + 1n, 1n << 40n, (1n << 64n) - 1n])
        : BigInt(rand.pick([(1 << 25) + 1, 0x7fffffff, 0xffffffff]));
      const flags = extended ? P.NBD_CMD_FLAG_PAYLOAD_LEN : 0;
      return { kind: 'fatal:huge-payload', bytes: requestFrame(extended, flags, type, 0n, length) };
    }
    case 3:
      return shortWrite(rand, mode);
    case 4:
      return phase === 'haggle'
        ? { kind: 'fatal:bad-option-magic', bytes: Buffer.concat([Buffer.from('IHAVEOPX'), noise(rand, 8)]) }
        : { kind: 'DISC', bytes: disc(extended) };
    case 5:
      // Haggling: an option promising more data than will ever come (the server waits, then the close).
      return phase === 'haggle'
        ? {
            kind: 'fatal:option-length-lie',
            bytes: encodeOption(rand.pick(HAGGLE_OPTIONS), noise(rand, 10), 0xffffffff),
          }
        : {
            kind: 'fatal:truncated-header',
            bytes: randomRequestWithMagic(
              rand,
              extended ? P.NBD_EXTENDED_REQUEST_MAGIC : P.NBD_REQUEST_MAGIC,
            ).subarray(0, 1 + rand.int(20)),
          };
    default:
      return phase === 'haggle'
        ? { kind: 'ABORT', bytes: encodeOption(P.NBD_OPT_ABORT, noise(rand, rand.int(3))) }
        : { kind: 'fatal:noise', bytes: noise(rand, 1 + rand.int(100)) };
  }
}

function randomRequestWithMagic(rand: Rand, magic: number): Buffer {
  const header = noise(rand, requestBytes(magic === P.NBD_EXTENDED_REQUEST_MAGIC));
  header.writeUInt32BE(magic, 0);
  return header;
}

function disc(extended: boolean): Buffer {
  return requestFrame(extended, 0, P.NBD_CMD_DISC, 0n, 0n);
}

/** The options that put a session in `mode` with some contexts selected (maybe bogus ones). */
function negotiate(rand: Rand, target: FuzzExport, mode: Mode): Frame[] {
  const frames: Frame[] = [];
  if (mode === 'extended') frames.push(optionOnly('opt:EXTENDED_HEADERS', P.NBD_OPT_EXTENDED_HEADERS));
  if (mode === 'structured') frames.push(optionOnly('opt:STRUCTURED_REPLY', P.NBD_OPT_STRUCTURED_REPLY));
  if (mode !== 'simple' && rand.next() < 0.8) {
    const choices = [
      'base:allocation',
      'base:allocation',
      'base:bogus',
      'thinpool:delta:999',
      'nonsense',
      ...target.contexts,
    ];
    const queries = Array.from({ length: rand.int(4) }, () => rand.pick(choices));
    frames.push({
      kind: 'opt:SET_META_CONTEXT',
      bytes: encodeOption(P.NBD_OPT_SET_META_CONTEXT, RawClient.metaRequest(target.name, queries)),
    });
  }
  const infos = rand.next() < 0.5 ? [P.NBD_INFO_BLOCK_SIZE] : [];
  frames.push({
    kind: 'opt:GO',
    bytes: encodeOption(P.NBD_OPT_GO, RawClient.infoRequest(target.name, infos)),
  });
  return frames;
}

/** The bytes ahead of a session opened with EXPORT_NAME (no replies to wait for). */
function exportNameOpen(target: FuzzExport): Frame {
  return { kind: 'opt:EXPORT_NAME', bytes: encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from(target.name)) };
}

function script(
  scenario: string,
  frames: Frame[],
  rand: Rand,
  extra: Partial<HostileScript> = {},
): HostileScript {
  const total = frames.reduce((n, f) => n + f.bytes.length, 0);
  return {
    scenario,
    frames,
    cutAt: rand.next() < 0.15 ? rand.int(total) : total,
    readReplies: rand.next() < 0.9,
    trickle: false,
    lingerMs: 5 + rand.int(40),
    close: rand.next() < 0.5 ? 'destroy' : 'end',
    ...extra,
  };
}

/** Haggling only: many options, valid and not, then a fatal frame, ABORT or a plain close. */
function haggleScript(rand: Rand, exports: readonly FuzzExport[]): HostileScript {
  const frames = [clientFlags(rand)];
  const count = rand.int(80);
  for (let i = 0; i < count; i++) frames.push(randomOption(rand, exports));
  if (rand.next() < 0.6) frames.push(fatalFrame(rand, 'haggle', 'simple'));
  return script('haggle', frames, rand, { trickle: rand.next() < 0.03 });
}

/** A session in a random mode, then a burst of random requests and maybe a fatal frame. */
function sessionScript(rand: Rand, exports: readonly FuzzExport[]): HostileScript {
  const target = rand.pick([...exports]);
  const mode = rand.pick<Mode>(['simple', 'structured', 'extended', 'extended']);
  const frames = [clientFlags(rand)];
  frames.push(
    ...Array.from({ length: rand.int(6) }, () => randomOption(rand, exports)).filter((f) => !f.enables),
  );
  if (mode === 'simple' && rand.next() < 0.3) frames.push(exportNameOpen(target));
  else frames.push(...negotiate(rand, target, mode));
  const count = 50 + rand.int(400);
  for (let i = 0; i < count; i++) frames.push(randomRequest(rand, target, mode));
  if (rand.next() < 0.6) frames.push(fatalFrame(rand, 'transmission', mode));
  return script(`session-${mode}`, frames, rand);
}

/**
 * Thousands of well-formed requests pipelined at once; a reader that never reads its replies
 * asks for large READs, so what the server would buffer is far beyond any bound it may keep.
 */
function floodScript(rand: Rand, exports: readonly FuzzExport[]): HostileScript {
  const target = rand.pick([...exports]);
  const mode = rand.pick<Mode>(['simple', 'structured', 'extended']);
  const readReplies = rand.next() < 0.6;
  const frames = [clientFlags(rand), ...negotiate(rand, target, mode)];
  frames[0] = { kind: 'flags', bytes: encodeU32(3) };
  const count = 2000 + rand.int(3000);
  const readBytes = readReplies ? 4096 : 1 << 20;
  for (let i = 0; i < count; i++) {
    const type = rand.pick([
      P.NBD_CMD_READ,
      P.NBD_CMD_READ,
      P.NBD_CMD_BLOCK_STATUS,
      P.NBD_CMD_CACHE,
      P.NBD_CMD_FLUSH,
    ]);
    const length = type === P.NBD_CMD_FLUSH ? 0 : Math.min(readBytes, target.sizeBytes);
    const offset = type === P.NBD_CMD_FLUSH ? 0 : 512 * rand.int((target.sizeBytes - length) / 512 + 1);
    const header = requestFrame(mode === 'extended', 0, type, BigInt(offset), BigInt(length));
    header.writeUInt32BE(i, REQUEST_COOKIE_AT + 4);
    frames.push({ kind: `flood:${P.commandName(type)}`, bytes: header });
  }
  return script(`flood-${readReplies ? 'reading' : 'never-reading'}`, frames, rand, {
    cutAt: frames.reduce((n, f) => n + f.bytes.length, 0),
    readReplies,
    lingerMs: readReplies ? 300 + rand.int(700) : 1000 + rand.int(1500),
  });
}

/** Bytes of noise from the very start, or after the client flags. */
function garbageScript(rand: Rand): HostileScript {
  const frames = rand.next() < 0.5 ? [clientFlags(rand)] : [];
  frames.push({ kind: 'garbage', bytes: noise(rand, 1 + rand.int(4096)) });
  return script('garbage', frames, rand);
}

/** The next hostile connection, of a scenario drawn by weight. */
export function hostileScript(rand: Rand, exports: readonly FuzzExport[]): HostileScript {
  const roll = rand.next();
  if (roll < 0.25) return haggleScript(rand, exports);
  if (roll < 0.94) return sessionScript(rand, exports);
  if (roll < 0.96) return floodScript(rand, exports);
  return garbageScript(rand);
}

/**
 * A short valid conversation (negotiation, then one request of each kind) for the cut sweep:
 * sending its first i bytes and hanging up, for every i, closes at every byte of every frame.
 */
export function sweepFrames(target: FuzzExport, mode: Mode): Frame[] {
  const frames: Frame[] = [{ kind: 'flags', bytes: encodeU32(3) }];
  frames.push({ kind: 'opt:LIST', bytes: encodeOption(P.NBD_OPT_LIST, Buffer.alloc(0)) });
  const info = RawClient.infoRequest(target.name, [P.NBD_INFO_BLOCK_SIZE]);
  frames.push({ kind: 'opt:INFO', bytes: encodeOption(P.NBD_OPT_INFO, info) });
  if (mode === 'extended') frames.push(optionOnly('opt:EXTENDED_HEADERS', P.NBD_OPT_EXTENDED_HEADERS));
  if (mode === 'structured') frames.push(optionOnly('opt:STRUCTURED_REPLY', P.NBD_OPT_STRUCTURED_REPLY));
  if (mode !== 'simple') {
    const meta = RawClient.metaRequest(target.name, ['base:allocation']);
    frames.push({ kind: 'opt:SET_META_CONTEXT', bytes: encodeOption(P.NBD_OPT_SET_META_CONTEXT, meta) });
  }
  frames.push({ kind: 'opt:GO', bytes: encodeOption(P.NBD_OPT_GO, info) });
  const extended = mode === 'extended';
  for (const type of [
    P.NBD_CMD_READ,
    P.NBD_CMD_WRITE,
    P.NBD_CMD_FLUSH,
    P.NBD_CMD_BLOCK_STATUS,
    P.NBD_CMD_DISC,
  ]) {
    const payload = type === P.NBD_CMD_WRITE ? Buffer.alloc(512, 0x5a) : undefined;
    const flags = extended && payload ? P.NBD_CMD_FLAG_PAYLOAD_LEN : 0;
    const length = type === P.NBD_CMD_FLUSH || type === P.NBD_CMD_DISC ? 0 : 512;
    const header = requestFrame(extended, flags, type, 0n, BigInt(length));
    const bytes = payload ? Buffer.concat([header, payload]) : header;
    frames.push({ kind: `sweep:${P.commandName(type)}`, bytes });
  }
  return frames;
}

function optionOnly(kind: string, code: number): Frame {
  return { kind, bytes: encodeOption(code, Buffer.alloc(0)) };
}
