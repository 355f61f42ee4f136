// Errors carry their gRPC status code; `toStatus` is the one place anything thrown inside a
// handler becomes a gRPC status.
import { status } from '@grpc/grpc-js';
import { ExecError } from '../exec';
import { AttachError, type AttachFailure } from '../node/attach';
import { PoolError } from '../thin/errors';

export class CsiError extends Error {
  constructor(
    readonly code: status,
    message: string,
  ) {
    super(message);
    this.name = 'CsiError';
  }
}

export const invalidArgument = (message: string): CsiError => new CsiError(status.INVALID_ARGUMENT, message);
export const notFound = (message: string): CsiError => new CsiError(status.NOT_FOUND, message);
export const alreadyExists = (message: string): CsiError => new CsiError(status.ALREADY_EXISTS, message);
export const outOfRange = (message: string): CsiError => new CsiError(status.OUT_OF_RANGE, message);
export const failedPrecondition = (message: string): CsiError =>
  new CsiError(status.FAILED_PRECONDITION, message);
export const resourceExhausted = (message: string): CsiError =>
  new CsiError(status.RESOURCE_EXHAUSTED, message);
export const aborted = (message: string): CsiError => new CsiError(status.ABORTED, message);
export const unavailable = (message: string): CsiError => new CsiError(status.UNAVAILABLE, message);
export const unimplemented = (message: string): CsiError => new CsiError(status.UNIMPLEMENTED, message);

const byErrno: Record<PoolError['errno'], status> = {
  ENOSPC: status.RESOURCE_EXHAUSTED,
  EROFS: status.FAILED_PRECONDITION,
  EINVAL: status.INVALID_ARGUMENT,
  ENOENT: status.NOT_FOUND,
  EEXIST: status.ALREADY_EXISTS,
  EBUSY: status.ABORTED,
  EIO: status.INTERNAL,
};

// A refused export means the grant is gone or wrong (the CO must publish again); an absent
// server may come back.
const attachCodes: Record<AttachFailure, status> = {
  refused: status.FAILED_PRECONDITION,
  unreachable: status.UNAVAILABLE,
  failed: status.INTERNAL,
};

/** The gRPC code and message for anything a handler threw. */
export function toStatus(error: unknown): { code: status; details: string } {
  if (error instanceof CsiError) return { code: error.code, details: error.message };
  if (error instanceof PoolError) return { code: byErrno[error.errno], details: error.message };
  if (error instanceof AttachError) return { code: attachCodes[error.reason], details: error.message };
  if (error instanceof ExecError) return { code: status.INTERNAL, details: error.message };
  const message = error instanceof Error ? error.message : String(error);
  return { code: status.INTERNAL, details: message };
}
