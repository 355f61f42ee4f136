// A small NBD client: fixed-newstyle handshake with OPT_GO, structured replies (holes come back
// as OFFSET_HOLE), pipelined requests on one socket, and a pool of connections to one export.
// It shares the wire codec with the server (../wire) but none of the server's code.
export { NbdClient } from './connection';
export { NbdConnectionPool } from './pool';
export {
  type ConnectOptions,
  type NbdAddress,
  NbdError,
  type NbdExportInfo,
  parseNbdEndpoint,
  type ReadResult,
  type StatusExtent,
} from './types';
