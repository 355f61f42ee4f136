/** A user-facing failure: printed as one line, exit status 1, no stack trace. */
export class CommandFailed extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CommandFailed';
  }
}
