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
  /** `errno`: the failure that made it read-only, for the operation that ran into it. */
  constructor(reason: string, errno: 'EROFS' | 'EIO' | 'ENOSPC' = 'EROFS') {
    super(`pool is read-only: ${reason}`, errno);
  }
}

export class DeviceRangeError extends PoolError {
  constructor(message: string) {
    super(message, 'EINVAL');
  }
}

export class DeviceNotFoundError extends PoolError {
  constructor(readonly deviceId: number) {
    super(`thin device ${deviceId} does not exist`, 'ENOENT');
  }
}

export class DeviceExistsError extends PoolError {
  constructor(readonly deviceId: number) {
    super(`thin device ${deviceId} already exists`, 'EEXIST');
  }
}

/** The kernel's set_transaction_id refused: someone else moved the pool on. */
export class TransactionIdMismatchError extends PoolError {
  constructor(
    readonly expected: number,
    readonly actual: number,
  ) {
    super(`transaction id is ${actual}, not the expected ${expected}`, 'EBUSY');
  }
}

export class MetadataSnapBusyError extends PoolError {
  constructor(readonly heldRoot: number) {
    super(
      `a metadata snapshot is already held (superblock copy at block ${heldRoot}); release it first`,
      'EBUSY',
    );
  }
}

export class NoMetadataSnapError extends PoolError {
  constructor() {
    super('no metadata snapshot is held', 'ENOENT');
  }
}
