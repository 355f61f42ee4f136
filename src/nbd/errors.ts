import { errorByName, NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_ENOTSUP, NBD_EPERM } from './protocol';

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

/** Node error codes that are not NBD error names but mean one (the names map to themselves). */
const aliases: Record<string, number> = {
  EDQUOT: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  EACCES: NBD_EPERM,
  EROFS: NBD_EPERM,
  EOPNOTSUPP: NBD_ENOTSUP,
};

function byCode(code: unknown): number | undefined {
  if (typeof code !== 'string') return undefined;
  return Object.hasOwn(aliases, code) ? aliases[code] : errorByName(code);
}

/**
 * Maps an error thrown by a BlockDevice (or by our own validation) to an NBD error value.
 * RangeError is how devices reject bad offsets; anything unrecognised becomes EIO.
 */
export function nbdErrorOf(error: unknown): number {
  if (error instanceof NbdCommandError) return error.nbdError;
  if (error instanceof RangeError) return NBD_EINVAL;
  // Devices may also name their errno as a string (`errno: 'ENOSPC'`; Node's own is a number).
  return (
    byCode((error as NodeJS.ErrnoException | undefined)?.code) ??
    byCode((error as { errno?: unknown } | undefined)?.errno) ??
    NBD_EIO
  );
}
