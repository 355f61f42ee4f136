// How pool devices become NBD exports: the one place that knows both the pool and the NBD
// export definition (neither thin/ nor nbd/ imports the other).
import type { ExportDefinition, MetaContextProvider } from '../nbd';
import type { Pool } from '../thin/pool';
import { MeteredDevice } from '../metrics/nbd-metrics';

export const DELTA_CONTEXT_PREFIX = 'thinpool:delta:';
/** Status bit of the delta context: the extent differs from the base snapshot. */
export const DELTA_CHANGED = 1;

/** `thinpool:delta:<base>` for `target`: changed extents flagged, at data-block granularity. */
export function deltaContext(pool: Pool, base: number, target: number): MetaContextProvider {
  return async (offset, length) =>
    (await pool.changedExtents(base, target, offset, length)).map((e) => ({
      length: e.length,
      flags: e.changed ? DELTA_CHANGED : 0,
    }));
}

export interface DeviceExportOptions {
  name: string;
  deviceId: number;
  readOnly: boolean;
  access?: ExportDefinition['access'];
  /** Base devices to offer delta contexts against (read-only exports only). */
  deltaBases?: number[];
}

/** An export of one thin device; read-only exports also carry delta contexts. */
export function deviceExport(pool: Pool, options: DeviceExportOptions): ExportDefinition {
  const device = pool.device(options.deviceId, { readOnly: options.readOnly });
  const metaContexts: Record<string, MetaContextProvider> = {};
  if (options.readOnly) {
    for (const base of options.deltaBases ?? []) {
      if (base !== options.deviceId)
        metaContexts[DELTA_CONTEXT_PREFIX + base] = deltaContext(pool, base, options.deviceId);
    }
  }
  const info = pool.deviceInfo(options.deviceId);
  return {
    name: options.name,
    description: `thin device ${options.deviceId}${info.origin !== undefined ? ` (snapshot of ${info.origin})` : ''}`,
    device: new MeteredDevice(device, options.name),
    readOnly: options.readOnly,
    access: options.access ?? { kind: 'open' },
    metaContexts,
    fastZero: true,
    // Holes as OFFSET_HOLE chunks cost a block-status lookup per READ: worth it for snapshot
    // readers (backup, copies), not for a volume's hot path.
    sparseReads: options.readOnly,
  };
}
