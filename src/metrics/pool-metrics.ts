import client from 'prom-client';
import type { Pool } from '../thin/pool';
import { registry } from './registry';

/**
 * Gauges read from the pool at scrape time, so they are never stale. Several pools may be
 * registered (one label value each).
 */
const pools = new Map<string, () => Pool | undefined>();

function eachPool(fn: (label: string, pool: Pool) => void): void {
  for (const [label, get] of pools) {
    const pool = get();
    if (pool) fn(label, pool);
  }
}

function gauge(name: string, help: string, value: (pool: Pool) => number): void {
  new client.Gauge({
    name,
    help,
    labelNames: ['pool'] as const,
    registers: [registry],
    collect() {
      this.reset();
      eachPool((label, pool) => this.set({ pool: label }, value(pool)));
    },
  });
}

gauge('thinpool_pool_data_blocks_used', 'Data blocks in use', (p) => p.status().dataBlocksUsed);
gauge('thinpool_pool_data_blocks_total', 'Data blocks in the pool', (p) => p.status().dataBlocksTotal);
gauge('thinpool_pool_data_free_bytes', 'Free data space in bytes', (p) => {
  const s = p.status();
  return (s.dataBlocksTotal - s.dataBlocksUsed) * s.dataBlockBytes;
});
gauge('thinpool_pool_data_usage_ratio', 'Fraction of data blocks in use (alert before 1)', (p) => {
  const s = p.status();
  return s.dataBlocksUsed / s.dataBlocksTotal;
});
gauge('thinpool_pool_metadata_blocks_used', 'Metadata blocks in use', (p) => p.status().metadataBlocksUsed);
gauge(
  'thinpool_pool_metadata_blocks_total',
  'Metadata blocks in the pool',
  (p) => p.status().metadataBlocksTotal,
);
gauge('thinpool_pool_metadata_usage_ratio', 'Fraction of metadata blocks in use', (p) => {
  const s = p.status();
  return s.metadataBlocksUsed / s.metadataBlocksTotal;
});
gauge('thinpool_pool_devices', 'Thin devices (volumes and snapshots)', (p) => p.status().devices);
gauge(
  'thinpool_pool_snapshots',
  'Thin devices that are snapshots of another',
  (p) => p.status().catalogue.snapshots,
);
gauge('thinpool_pool_read_only', '1 when the pool went read-only (e.g. out of metadata space)', (p) =>
  p.status().mode === 'read-only' ? 1 : 0,
);
gauge(
  'thinpool_pool_era_current',
  "Current era of the pool's era tracking (0 when the pool has none)",
  (p) => p.era?.currentEra ?? 0,
);
gauge(
  'thinpool_pool_era_blocks_marked',
  'Data blocks written so far in the current era',
  (p) => p.era?.status().markedThisEra ?? 0,
);
gauge(
  'thinpool_pool_transaction_id',
  'Pool transaction id (moves with every device change)',
  (p) => p.status().transactionId,
);

// Counters read from the pool at scrape time; they start again at 0 when the pool is reopened,
// which Prometheus's rate() treats as a counter reset.
function counter(name: string, help: string, value: (pool: Pool) => number): void {
  new client.Counter({
    name,
    help,
    labelNames: ['pool'] as const,
    registers: [registry],
    collect() {
      this.reset();
      eachPool((label, pool) => this.inc({ pool: label }, value(pool)));
    },
  });
}

counter('thinpool_pool_commits_total', 'Metadata commits (new superblocks)', (p) => p.status().commits);
counter(
  'thinpool_pool_data_syncs_total',
  'Syncs of the data file (flushes and commits with new mappings)',
  (p) => p.status().dataSyncs,
);

/** Makes a pool visible to /metrics; the getter may return undefined while it is not open. */
export function registerPoolMetrics(label: string, get: () => Pool | undefined): void {
  pools.set(label, get);
}
