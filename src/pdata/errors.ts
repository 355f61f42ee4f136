// Errors of the persistent-data layer. Each names the metadata block it is about, so that an
// operator can find it with thin_check or a hex dump.

export class MetadataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A block failed its validator: wrong checksum, wrong self-location, or a broken header. */
export class BlockCorruptError extends MetadataError {
  constructor(
    readonly blockType: string,
    readonly block: number,
    readonly reason: string,
  ) {
    super(`${reason} in ${blockType} (block ${block})`);
  }
}

/** The metadata device has no free block left; the pool must go read-only. */
export class NoMetadataSpaceError extends MetadataError {
  constructor(what: string) {
    super(`out of metadata space while allocating ${what}`);
  }
}

/** The data device has no free block left. */
export class NoDataSpaceError extends MetadataError {
  constructor() {
    super('out of data space');
  }
}

/** A change was asked of metadata opened read-only. */
export class MetadataReadOnlyError extends MetadataError {
  constructor(path: string, what: string) {
    super(`metadata ${path} is open read-only; cannot ${what}`);
  }
}

/** A structural rule of a tree or space map does not hold. */
export class MetadataInvariantError extends MetadataError {}

/** A read or write of the metadata device failed or came up short; `code` is the errno name. */
export class MetadataIoError extends MetadataError {
  constructor(
    message: string,
    readonly code = 'EIO',
  ) {
    super(message);
  }
}
