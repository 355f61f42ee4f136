// What the backup repository throws: one base class, so the CLI can tell repository trouble
// (a clear message for the operator) from a bug.

export class RepositoryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RepositoryError';
  }
}

/** Another writer holds the repository's lock. */
export class RepositoryLocked extends RepositoryError {}

/** A chunk that is missing or whose contents do not match its name. */
export class ChunkError extends RepositoryError {
  constructor(
    readonly sha256: string,
    readonly file: string,
    readonly problem: 'missing' | 'corrupt',
    detail: string,
  ) {
    super(`chunk ${sha256} (${file}) is ${problem}: ${detail}`);
  }
}
