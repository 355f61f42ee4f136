import { createHash, timingSafeEqual } from 'node:crypto';
import type { BlockDevice } from '../block-device';
import { BASE_ALLOCATION, MAX_STRING_BYTES } from './protocol';

/** One extent of a custom meta context: `length` bytes with a 32-bit status value. */
export interface ContextExtent {
  length: number;
  flags: number;
}

/**
 * Answers BLOCK_STATUS for one custom meta context: extents covering [offset, offset+length)
 * in order, starting at `offset`. May stop early (the client asks again), must not return nothing.
 */
export type MetaContextProvider = (offset: number, length: number) => Promise<ContextExtent[]>;

/**
 * Who may open an export. With `secret`, the client asks for `<name>/<secret>` as the export
 * name (e.g. `nbd-client -N vol/s3cret`, `nbdinfo nbd://host/vol/s3cret`); the bare name or a
 * wrong secret is refused before any data or size is sent, and LIST does not show the export.
 */
export type AccessRule = { kind: 'open' } | { kind: 'secret'; secret: string };

export interface ExportDefinition {
  /** Unique name; may contain '/', must not be empty. */
  name: string;
  description?: string;
  device: BlockDevice;
  /** Forced read-only even if the device is writable (snapshots). */
  readOnly?: boolean;
  access: AccessRule;
  /**
   * When set, the client must also have presented a verified TLS client certificate whose
   * subject CN or a DNS subjectAltName is in this list (e.g. the node ControllerPublish named).
   */
  clientCertNames?: string[];
  /** Extra meta contexts beyond `base:allocation`, e.g. `thinpool:delta:<base-id>`. */
  metaContexts?: Record<string, MetaContextProvider>;
  /**
   * `device.writeZeroes` without `noHole` is much cheaper than writing zeros (e.g. it unmaps).
   * Without it, WRITE_ZEROES with FAST_ZERO is refused with ENOTSUP, as the spec allows.
   */
  fastZero?: boolean;
  /** Send OFFSET_HOLE chunks for reads of holes (costs one blockStatus per structured READ). */
  sparseReads?: boolean;
}

/** What the connecting client proved about itself. */
export interface ClientIdentity {
  tls: boolean;
  /** Names from a verified client certificate (CN and DNS subjectAltNames). */
  certNames: readonly string[];
}

export type ExportLookup =
  { kind: 'ok'; export: ExportDefinition } | { kind: 'unknown' } | { kind: 'denied'; reason: string };

export const SECRET_SEPARATOR = '/';

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/** Constant-time comparison so a client can't learn a secret one byte at a time. */
function secretMatches(expected: string, presented: string): boolean {
  return timingSafeEqual(digest(expected), digest(presented));
}

export function validateExportDefinition(definition: ExportDefinition): void {
  const { name, access } = definition;
  if (name.length === 0 || Buffer.byteLength(name) > MAX_STRING_BYTES || name.includes('\0')) {
    throw new RangeError(`export name ${JSON.stringify(name)} must be 1..${MAX_STRING_BYTES} bytes, no NUL`);
  }
  if (access.kind === 'secret') {
    const { secret } = access;
    if (secret.length < 8 || secret.includes(SECRET_SEPARATOR) || secret.includes('\0')) {
      throw new RangeError(`export ${name}: secret must be ≥ 8 characters without '/' or NUL`);
    }
    if (Buffer.byteLength(name) + 1 + Buffer.byteLength(secret) > MAX_STRING_BYTES) {
      throw new RangeError(`export ${name}: name and secret together exceed ${MAX_STRING_BYTES} bytes`);
    }
  }
  for (const context of Object.keys(definition.metaContexts ?? {})) {
    if (context === BASE_ALLOCATION || !/^[^:]+:.+/.test(context)) {
      throw new RangeError(`export ${name}: meta context ${JSON.stringify(context)} must be namespace:leaf`);
    }
  }
  if (definition.device.sizeBytes % 512 !== 0) {
    throw new RangeError(
      `export ${name}: device size ${definition.device.sizeBytes} is not a multiple of 512`,
    );
  }
}

/** The exports a server offers, by name. Names are compared exactly (UTF-8, case-sensitive). */
export class ExportRegistry {
  private readonly byName = new Map<string, ExportDefinition>();
  /** Served to clients that ask for the empty name (`nbdinfo nbd://host`), if set. */
  defaultExportName: string | undefined;

  add(definition: ExportDefinition): void {
    validateExportDefinition(definition);
    if (this.byName.has(definition.name)) throw new Error(`export ${definition.name} already exists`);
    this.byName.set(definition.name, definition);
  }

  remove(name: string): ExportDefinition | undefined {
    const definition = this.byName.get(name);
    this.byName.delete(name);
    return definition;
  }

  get(name: string): ExportDefinition | undefined {
    return this.byName.get(name);
  }

  list(): ExportDefinition[] {
    return [...this.byName.values()];
  }

  /**
   * What NBD_OPT_LIST shows this client: open exports it could use. Secret-protected exports
   * are left out entirely, so listing reveals neither their secrets nor that they exist.
   */
  listVisible(client: ClientIdentity): ExportDefinition[] {
    return this.list().filter(
      (d) =>
        d.access.kind === 'open' &&
        (!d.clientCertNames || (client.tls && client.certNames.some((n) => d.clientCertNames?.includes(n)))),
    );
  }

  /** Finds the export a client asked for and checks its access rule. */
  lookup(requested: string, client: ClientIdentity): ExportLookup {
    let name = requested;
    let presentedSecret: string | undefined;
    if (requested === '' && this.defaultExportName !== undefined) name = this.defaultExportName;
    let definition = this.byName.get(name);
    if (!definition) {
      const cut = requested.lastIndexOf(SECRET_SEPARATOR);
      if (cut > 0) {
        name = requested.slice(0, cut);
        presentedSecret = requested.slice(cut + 1);
        definition = this.byName.get(name);
      }
    }
    if (!definition) return { kind: 'unknown' };
    const { access } = definition;
    if (access.kind === 'secret') {
      if (presentedSecret === undefined || !secretMatches(access.secret, presentedSecret)) {
        return { kind: 'denied', reason: 'access denied' };
      }
    } else if (presentedSecret !== undefined) {
      // An open export reached through "name/x": refuse rather than ignore the suffix.
      return { kind: 'unknown' };
    }
    if (definition.clientCertNames) {
      const allowed = definition.clientCertNames;
      if (!client.tls || !client.certNames.some((n) => allowed.includes(n))) {
        return { kind: 'denied', reason: 'client certificate not allowed for this export' };
      }
    }
    return { kind: 'ok', export: definition };
  }
}
