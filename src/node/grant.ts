// Talking to the NBD server a grant names: its URI, the export's size, and attach errors that
// name the export without its secret.
import { ExecError, run } from '../exec';
import { redactExportName } from '../util/export-name';
import { formatHostPort, parseHostPort } from '../util/host-port';
import type { Grant } from './attachment';

/** Why attaching failed, in terms the CSI layer turns into a status code. */
export type AttachFailure = 'refused' | 'unreachable' | 'failed';

/** An attach that failed; the message names the export without its secret. */
export class AttachError extends Error {
  constructor(
    readonly reason: AttachFailure,
    message: string,
  ) {
    super(message);
    this.name = 'AttachError';
  }
}

/**
 * What to hide of an export name that carries an access secret (`<export>/<secret>`): the whole
 * name, plain and URI-encoded (hiding only the secret would also blot out any short secret's
 * letters elsewhere in a message).
 */
export function secretOf(exportName: string): string[] {
  if (exportName.lastIndexOf('/') <= 0) return [];
  return [exportName, encodeExportName(exportName)];
}

function encodeExportName(exportName: string): string {
  return exportName.split('/').map(encodeURIComponent).join('/');
}

// nbd-client's and nbdinfo's words for a server that refused the export or was not there.
const REFUSED =
  /no such export|has no export|not found|policy prevents|not allowed|permission denied|access denied|EPERM|EACCES/i;
const UNREACHABLE = /connection refused|timed out|no route|unreachable|could not resolve|name or service/i;

/** `what` (e.g. "nbdfuse") failed for `grant`: an AttachError classified by the tool's words. */
export function attachError(what: string, grant: Grant, e: unknown): AttachError {
  const text = e instanceof ExecError ? e.stderr.trim() || e.reason : (e as Error).message;
  // nbd-client ends its complaint with a line "Exiting."
  const detail = text.replace(/\s*\n\s*/g, ' ').replace(/\s*Exiting\.$/, '');
  const reason: AttachFailure = REFUSED.test(detail)
    ? 'refused'
    : UNREACHABLE.test(detail)
      ? 'unreachable'
      : 'failed';
  const name = redactExportName(grant.exportName);
  return new AttachError(reason, `${what} of export ${name} from ${grant.endpoint} failed: ${detail}`);
}

/** The grant's endpoint, or an AttachError: a grant is data from another process. */
export function grantEndpoint(grant: Grant): { host: string; port: number } {
  try {
    return parseHostPort(grant.endpoint, 'NBD endpoint');
  } catch (e) {
    throw new AttachError(
      'failed',
      `grant for export ${redactExportName(grant.exportName)}: ${(e as Error).message}`,
    );
  }
}

export function nbdUri(grant: Grant, exportName: string): string {
  return `nbd://${formatHostPort(grantEndpoint(grant))}/${encodeExportName(exportName)}`;
}

/** The export's current size, asked of the server (follows ControllerExpandVolume). */
export async function exportSizeBytes(grant: Grant): Promise<number> {
  const { stdout } = await run('nbdinfo', ['--size', nbdUri(grant, grant.exportName)], {
    quiet: true,
    secrets: secretOf(grant.exportName),
  }).catch((e: unknown) => {
    throw attachError('asking the size', grant, e);
  });
  return Number(stdout.trim());
}
