import type { ContextExtent, ExportDefinition } from './exports';
import { NbdCommandError } from './errors';
import { BASE_ALLOCATION, NBD_EIO, NBD_STATE_HOLE, NBD_STATE_ZERO } from './protocol';

/** A context chosen with SET_META_CONTEXT; the id is what BLOCK_STATUS replies carry. */
export interface SelectedContext {
  id: number;
  name: string;
}

/** Every context an export can answer for, `base:allocation` first. */
export function contextNames(definition: ExportDefinition): string[] {
  return [BASE_ALLOCATION, ...Object.keys(definition.metaContexts ?? {})];
}

/**
 * Contexts matching one query. LIST accepts `namespace:` (and any prefix ending in ':',
 * e.g. `thinpool:delta:`) as a wildcard; SET only selects exact names, as the spec asks.
 */
export function matchContexts(available: readonly string[], query: string, forList: boolean): string[] {
  if (available.includes(query)) return [query];
  if (forList && query.endsWith(':')) return available.filter((name) => name.startsWith(query));
  return [];
}

/**
 * Status extents for one context over [offset, offset+length), clipped to the request,
 * merged when neighbours share a status, at most `maxExtents` (one with REQ_ONE).
 */
export async function contextExtents(
  definition: ExportDefinition,
  name: string,
  offset: number,
  length: number,
  maxExtents: number,
): Promise<ContextExtent[]> {
  const raw = name === BASE_ALLOCATION ? await allocationExtents(definition, offset, length) : await custom();
  const out: ContextExtent[] = [];
  let covered = 0;
  for (const extent of raw) {
    if (covered >= length) break;
    if (!Number.isSafeInteger(extent.length) || extent.length <= 0 || !Number.isInteger(extent.flags)) {
      throw new NbdCommandError(
        NBD_EIO,
        `context ${name} returned an invalid extent ${JSON.stringify(extent)}`,
      );
    }
    const piece = Math.min(extent.length, length - covered);
    const flags = extent.flags >>> 0;
    const last = out[out.length - 1];
    if (last && last.flags === flags) last.length += piece;
    else if (out.length < maxExtents) out.push({ length: piece, flags });
    else break;
    covered += piece;
  }
  if (out.length === 0)
    throw new NbdCommandError(NBD_EIO, `context ${name} returned no extents at ${offset}`);
  return out;

  function custom(): Promise<ContextExtent[]> {
    const provider = definition.metaContexts?.[name];
    if (!provider) throw new NbdCommandError(NBD_EIO, `context ${name} is not provided by this export`);
    return provider(offset, length);
  }
}

async function allocationExtents(
  definition: ExportDefinition,
  offset: number,
  length: number,
): Promise<ContextExtent[]> {
  const extents = await definition.device.blockStatus(offset, length);
  const out: ContextExtent[] = [];
  let cursor = offset;
  for (const extent of extents) {
    const end = extent.offset + extent.length;
    // Extents must be consecutive; a gap or overlap ends the answer (the client asks again).
    if (extent.offset > cursor || end <= cursor) break;
    const flags = (extent.hole ? NBD_STATE_HOLE : 0) | (extent.zero || extent.hole ? NBD_STATE_ZERO : 0);
    out.push({ length: end - cursor, flags });
    cursor = end;
  }
  return out;
}
