// The client side of the fixed-newstyle handshake: structured replies and meta contexts if
// asked, then GO with a request for block-size constraints (EXPORT_NAME when GO is unknown).
import { redactExportName } from '../../util/export-name';
import * as P from '../protocol';
import {
  decodeExportNameReply,
  decodeGreeting,
  decodeInfo,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeU32,
} from '../wire';
import { type ConnectOptions, NbdError, type NbdExportInfo } from './types';

/** The socket as the handshake sees it: exact reads and writes. */
export interface HandshakeChannel {
  read(bytes: number): Promise<Buffer>;
  write(data: Buffer): void;
}

/** Option replies larger than this are refused (ours are a few dozen bytes). */
const MAX_OPTION_REPLY_BYTES = 1 << 20;
const NO_DATA = Buffer.alloc(0);
/** The spec's defaults for a server that states no block-size constraints. */
const DEFAULT_MIN_BLOCK_BYTES = 1;
const DEFAULT_PREFERRED_BLOCK_BYTES = 4096;

interface OptionReply {
  type: number;
  data: Buffer;
}

async function readOptionReply(channel: HandshakeChannel, option: number): Promise<OptionReply> {
  const header = decodeOptionReplyHeader(await channel.read(P.OPTION_REPLY_HEADER_BYTES));
  if (header.option !== option)
    throw new Error(`option reply for another option than ${P.optionName(option)}`);
  if (header.length > MAX_OPTION_REPLY_BYTES) throw new Error('option reply too large');
  return { type: header.type, data: header.length ? await channel.read(header.length) : NO_DATA };
}

function optionError(option: number, reply: OptionReply, subject: string): NbdError {
  const message = reply.data.length ? `: ${reply.data.toString('utf8')}` : '';
  return new NbdError(
    `NBD ${P.optionName(option)} ${subject}: ${P.optionErrorReason(reply.type)}${message}`,
    reply.type,
  );
}

/** Runs the handshake for `exportName`; resolves with what the server told us about it. */
export async function negotiate(
  channel: HandshakeChannel,
  exportName: string,
  options: ConnectOptions,
): Promise<NbdExportInfo> {
  const { handshakeFlags } = decodeGreeting(await channel.read(P.SERVER_GREETING_BYTES));
  if (!(handshakeFlags & P.NBD_FLAG_FIXED_NEWSTYLE)) throw new Error('the NBD server is not fixed-newstyle');
  const noZeroes = (handshakeFlags & P.NBD_FLAG_NO_ZEROES) !== 0;
  channel.write(encodeU32(P.NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? P.NBD_FLAG_C_NO_ZEROES : 0)));

  const info: NbdExportInfo = {
    sizeBytes: 0,
    transmissionFlags: 0,
    readOnly: false,
    canMultiConn: false,
    minBlockBytes: DEFAULT_MIN_BLOCK_BYTES,
    preferredBlockBytes: DEFAULT_PREFERRED_BLOCK_BYTES,
    maxPayloadBytes: P.MAX_PAYLOAD_BYTES,
    structuredReplies: false,
    metaContexts: new Map(),
  };

  if (options.structuredReplies !== false) {
    channel.write(encodeOption(P.NBD_OPT_STRUCTURED_REPLY, NO_DATA));
    const reply = await readOptionReply(channel, P.NBD_OPT_STRUCTURED_REPLY);
    info.structuredReplies = reply.type === P.NBD_REP_ACK;
  }

  const contexts = options.metaContexts ?? [];
  if (contexts.length) {
    if (!info.structuredReplies) throw new Error('meta contexts need structured replies');
    channel.write(encodeOption(P.NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest(exportName, contexts)));
    for (;;) {
      const reply = await readOptionReply(channel, P.NBD_OPT_SET_META_CONTEXT);
      if (reply.type === P.NBD_REP_META_CONTEXT) {
        const { id, name } = decodeMetaContextReply(reply.data);
        info.metaContexts.set(name, id);
      } else if (reply.type === P.NBD_REP_ACK) break;
      else throw optionError(P.NBD_OPT_SET_META_CONTEXT, reply, 'failed');
    }
  }

  channel.write(encodeOption(P.NBD_OPT_GO, encodeInfoRequest(exportName, [P.NBD_INFO_BLOCK_SIZE])));
  let gotExport = false;
  for (;;) {
    const reply = await readOptionReply(channel, P.NBD_OPT_GO);
    if (reply.type === P.NBD_REP_INFO) {
      const fact = decodeInfo(reply.data);
      if (fact?.kind === 'export') {
        info.sizeBytes = fact.sizeBytes;
        info.transmissionFlags = fact.transmissionFlags;
        gotExport = true;
      } else if (fact?.kind === 'block-size') {
        // Constraints we then obey, capped at what we would send anyway.
        info.minBlockBytes = fact.minBlockBytes;
        info.preferredBlockBytes = fact.preferredBlockBytes;
        info.maxPayloadBytes = Math.min(fact.maxPayloadBytes, P.MAX_PAYLOAD_BYTES);
      }
    } else if (reply.type === P.NBD_REP_ACK) {
      if (!gotExport) throw new Error('the NBD server acknowledged GO without export information');
      break;
    } else if (reply.type === P.NBD_REP_ERR_UNSUP) {
      // A server without GO: fall back to EXPORT_NAME, which has no error path.
      channel.write(encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from(exportName, 'utf8')));
      const replyBytes = P.EXPORT_NAME_REPLY_BYTES + (noZeroes ? 0 : P.EXPORT_NAME_ZEROES_BYTES);
      Object.assign(info, decodeExportNameReply(await channel.read(replyBytes)));
      break;
    } else {
      throw optionError(P.NBD_OPT_GO, reply, `of export ${JSON.stringify(redactExportName(exportName))}`);
    }
  }
  info.readOnly = (info.transmissionFlags & P.NBD_FLAG_READ_ONLY) !== 0;
  info.canMultiConn = (info.transmissionFlags & P.NBD_FLAG_CAN_MULTI_CONN) !== 0;
  return info;
}
