// Every number the NBD wire protocol uses, in one place (names follow the specification).
// 64-bit magics are split into two 32-bit halves because the hot path never needs BigInt.

// Handshake magics.
export const NBDMAGIC_HI = 0x4e42444d; // "NBDM"
export const NBDMAGIC_LO = 0x41474943; // "AGIC"
export const IHAVEOPT_HI = 0x49484156; // "IHAV"
export const IHAVEOPT_LO = 0x454f5054; // "EOPT"
export const OPTION_REPLY_MAGIC_HI = 0x0003e889;
export const OPTION_REPLY_MAGIC_LO = 0x045565a9;

// Transmission magics.
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_EXTENDED_REQUEST_MAGIC = 0x21e41c71;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const NBD_EXTENDED_REPLY_MAGIC = 0x6e8a278c;

// Handshake flags (server, u16) and client flags (u32).
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Options.
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_PEEK_EXPORT = 4;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

// Option reply types; errors have bit 31 set.
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_ERR_UNSUP = 0x80000001;
export const NBD_REP_ERR_POLICY = 0x80000002;
export const NBD_REP_ERR_INVALID = 0x80000003;
export const NBD_REP_ERR_PLATFORM = 0x80000004;
export const NBD_REP_ERR_TLS_REQD = 0x80000005;
export const NBD_REP_ERR_UNKNOWN = 0x80000006;
export const NBD_REP_ERR_SHUTDOWN = 0x80000007;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = 0x80000008;
export const NBD_REP_ERR_TOO_BIG = 0x80000009;
export const NBD_REP_ERR_EXT_HEADER_REQD = 0x8000000a;

// NBD_INFO types inside NBD_REP_INFO.
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// Transmission flags (u16).
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;
export const NBD_FLAG_BLOCK_STATUS_PAYLOAD = 1 << 12;

// Commands.
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;
export const NBD_CMD_RESIZE = 8;

// Command flags (u16).
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;
export const NBD_CMD_FLAG_PAYLOAD_LEN = 1 << 5;

// Reply chunk flags and types.
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_BLOCK_STATUS_EXT = 6;
export const NBD_REPLY_TYPE_ERROR = 0x8001;
export const NBD_REPLY_TYPE_ERROR_OFFSET = 0x8002;

// base:allocation status bits.
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

// Transmission error values (errno numbers as the protocol defines them).
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

// Sizes of fixed-length frames.
export const SERVER_GREETING_BYTES = 18;
export const OPTION_HEADER_BYTES = 16;
export const OPTION_REPLY_HEADER_BYTES = 20;
export const EXPORT_NAME_REPLY_BYTES = 10;
export const EXPORT_NAME_ZEROES_BYTES = 124;
export const COMPACT_REQUEST_BYTES = 28;
export const EXTENDED_REQUEST_BYTES = 32;
export const SIMPLE_REPLY_BYTES = 16;
export const STRUCTURED_REPLY_BYTES = 20;
export const EXTENDED_REPLY_BYTES = 32;
/** A request or reply starts with a u32 magic that says which header follows. */
export const MAGIC_BYTES = 4;
/** Fixed parts of chunk payloads: OFFSET_DATA's u64 offset; OFFSET_HOLE's offset and u32 size. */
export const OFFSET_DATA_PREFIX_BYTES = 8;
export const OFFSET_HOLE_BYTES = 12;

// Limits the specification sets or recommends.
export const MAX_STRING_BYTES = 4096;
export const BASE_ALLOCATION = 'base:allocation';
/** Block status replies should not carry more than 2^20 extents. */
export const MAX_EXTENTS_PER_REPLY = 1 << 20;
/** Largest DF read a server must serve unfragmented. */
export const DF_MAX_BYTES = 65536;

/** Our block-size constraints (advertised through NBD_INFO_BLOCK_SIZE). */
export const MIN_BLOCK_BYTES = 512;
export const PREFERRED_BLOCK_BYTES = 4096;
export const MAX_PAYLOAD_BYTES = 32 * 1024 * 1024;

const optionNames: Record<number, string> = {
  [NBD_OPT_EXPORT_NAME]: 'EXPORT_NAME',
  [NBD_OPT_ABORT]: 'ABORT',
  [NBD_OPT_LIST]: 'LIST',
  [NBD_OPT_PEEK_EXPORT]: 'PEEK_EXPORT',
  [NBD_OPT_STARTTLS]: 'STARTTLS',
  [NBD_OPT_INFO]: 'INFO',
  [NBD_OPT_GO]: 'GO',
  [NBD_OPT_STRUCTURED_REPLY]: 'STRUCTURED_REPLY',
  [NBD_OPT_LIST_META_CONTEXT]: 'LIST_META_CONTEXT',
  [NBD_OPT_SET_META_CONTEXT]: 'SET_META_CONTEXT',
  [NBD_OPT_EXTENDED_HEADERS]: 'EXTENDED_HEADERS',
};

const commandNames: Record<number, string> = {
  [NBD_CMD_READ]: 'READ',
  [NBD_CMD_WRITE]: 'WRITE',
  [NBD_CMD_DISC]: 'DISC',
  [NBD_CMD_FLUSH]: 'FLUSH',
  [NBD_CMD_TRIM]: 'TRIM',
  [NBD_CMD_CACHE]: 'CACHE',
  [NBD_CMD_WRITE_ZEROES]: 'WRITE_ZEROES',
  [NBD_CMD_BLOCK_STATUS]: 'BLOCK_STATUS',
  [NBD_CMD_RESIZE]: 'RESIZE',
};

const errorNames: Record<number, string> = {
  [NBD_EPERM]: 'EPERM',
  [NBD_EIO]: 'EIO',
  [NBD_ENOMEM]: 'ENOMEM',
  [NBD_EINVAL]: 'EINVAL',
  [NBD_ENOSPC]: 'ENOSPC',
  [NBD_EOVERFLOW]: 'EOVERFLOW',
  [NBD_ENOTSUP]: 'ENOTSUP',
  [NBD_ESHUTDOWN]: 'ESHUTDOWN',
};

const errorsByName: Record<string, number> = Object.fromEntries(
  Object.entries(errorNames).map(([value, name]) => [name, Number(value)]),
);

/** Why an option failed, by option reply error type (for messages a user reads). */
const optionErrorReasons: Record<number, string> = {
  [NBD_REP_ERR_UNSUP]: 'unsupported',
  [NBD_REP_ERR_POLICY]: 'refused by policy (access denied)',
  [NBD_REP_ERR_INVALID]: 'invalid',
  [NBD_REP_ERR_PLATFORM]: 'not available on this platform',
  [NBD_REP_ERR_TLS_REQD]: 'TLS required',
  [NBD_REP_ERR_UNKNOWN]: 'unknown export',
  [NBD_REP_ERR_SHUTDOWN]: 'server shutting down',
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: 'block size negotiation required',
  [NBD_REP_ERR_TOO_BIG]: 'request too big',
  [NBD_REP_ERR_EXT_HEADER_REQD]: 'extended headers required',
};

/** Name of a transmission error value (`EPERM`), or `errno N` for one the protocol does not define. */
export function errorName(error: number): string {
  return errorNames[error] ?? `errno ${error}`;
}

/** The transmission error value named `name` (`ENOSPC`), if the protocol defines it. */
export function errorByName(name: string): number | undefined {
  return Object.hasOwn(errorsByName, name) ? errorsByName[name] : undefined;
}

/** Whether an option reply type is an error (bit 31 set). */
export function isOptionError(type: number): boolean {
  return type >= 0x80000000;
}

/** What an option reply error means, e.g. `unknown export`. */
export function optionErrorReason(type: number): string {
  return optionErrorReasons[type] ?? `error 0x${type.toString(16)}`;
}

/** Human name of an option code, for logs. */
export function optionName(option: number): string {
  return optionNames[option] ?? `unknown(${option})`;
}

/** Human name of a command code, for logs. */
export function commandName(command: number): string {
  return commandNames[command] ?? `unknown(${command})`;
}
