// Errors the pool raises to its users, each with the errno an NBD or CSI layer should map it to.

export class PoolError extends Error {
  constructor(
    message: string,
    readonly errno: 'ENOSPC' | 'EROFS' | 'EIO' | 'EINVAL' | 'ENOENT' | 'EEXIST' | 'EBUSY',
  ) {
    super(message);
    this.name = new.target.name;
  }
}

export class OutOfDataSpaceError extends PoolError {
  constructor(detail = '') {
    super(`pool is out of data space${detail ? ': ' + detail : ''}`, 'ENOSPC');
  }
}

export class PoolReadOnlyError extends PoolError {
  constructor(reason: string) {
    super(`pool is read-only: ${reason}`, 'EROFS');
  }
}

export class DeviceRangeError extends PoolError {
  constructor(message: string) {
    super(message, 'EINVAL');
  }
}
