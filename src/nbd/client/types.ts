// What callers of the NBD client name and get back: addresses, negotiated facts, results, errors.
import { parseHostPort } from '../../util/host-port';

/** Where an NBD server listens: TCP or a unix socket. */
export type NbdAddress = { host: string; port: number } | { path: string };

/** `host:port`, `[v6]:port`, `unix:/path` or an absolute socket path. */
export function parseNbdEndpoint(endpoint: string): NbdAddress {
  if (endpoint.startsWith('unix:')) return { path: endpoint.replace(/^unix:(\/\/)?/, '') };
  if (endpoint.startsWith('/')) return { path: endpoint };
  try {
    return parseHostPort(endpoint, 'NBD endpoint');
  } catch {
    throw new RangeError(`NBD endpoint ${JSON.stringify(endpoint)} is not host:port or a socket path`);
  }
}

/** A failure the server reported: an option error during the handshake or an errno on a request. */
export class NbdError extends Error {
  constructor(
    message: string,
    /** The NBD errno (transmission) or option reply type (handshake). */
    readonly code: number,
  ) {
    super(message);
    this.name = 'NbdError';
  }
}

export interface NbdExportInfo {
  sizeBytes: number;
  transmissionFlags: number;
  readOnly: boolean;
  canMultiConn: boolean;
  minBlockBytes: number;
  preferredBlockBytes: number;
  maxPayloadBytes: number;
  structuredReplies: boolean;
  /** Meta contexts the server selected, by name → id. */
  metaContexts: Map<string, number>;
}

export interface ConnectOptions {
  /** Ask for structured replies (default true); holes then come back without data. */
  structuredReplies?: boolean;
  /** Meta contexts to select for BLOCK_STATUS, e.g. `base:allocation`. */
  metaContexts?: string[];
  /** Handshake deadline (default 10 s). */
  timeoutMs?: number;
}

export interface ReadResult {
  data: Buffer;
  /** Bytes of the request the server answered as holes (they read as zeros). */
  holeBytes: number;
}

export interface StatusExtent {
  length: number;
  flags: number;
}
