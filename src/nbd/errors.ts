import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
} from './protocol';

/** The peer broke a MUST of the protocol: its connection is dropped, nobody else is affected. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/** A command failed with a specific NBD error value (validation, policy). */
export class NbdCommandError extends Error {
  constructor(
    readonly nbdError: number,
    message: string,
  ) {
    super(message);
    this.name = 'NbdCommandError';
  }
}

const byCode: Record<string, number> = {
  ENOSPC: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  EPERM: NBD_EPERM,
  EACCES: NBD_EPERM,
  EROFS: NBD_EPERM,
  EINVAL: NBD_EINVAL,
  ENOMEM: NBD_ENOMEM,
  ESHUTDOWN: NBD_ESHUTDOWN,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
  EOPNOTSUPP: NBD_ENOTSUP,
};

/**
 * Maps an error thrown by a BlockDevice (or by our own validation) to an NBD error value.
 * RangeError is how devices reject bad offsets; anything unrecognised becomes EIO.
 */
export function nbdErrorOf(error: unknown): number {
  if (error instanceof NbdCommandError) return error.nbdError;
  if (error instanceof RangeError) return NBD_EINVAL;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code === 'string' && code in byCode) return byCode[code];
  // Devices that name their errno as a string (`errno: 'ENOSPC'`; Node's own errno is a number).
  const errno = (error as { errno?: unknown } | undefined)?.errno;
  if (typeof errno === 'string' && errno in byCode) return byCode[errno];
  return NBD_EIO;
}
