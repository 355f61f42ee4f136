import client from 'prom-client';

// One registry for the process: pool, NBD and CSI metrics plus Node's process metrics.
export const registry = new client.Registry();
client.collectDefaultMetrics({ register: registry, prefix: 'thinpool_process_' });

export const latencyBuckets = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5];

export const csiRequests = new client.Counter({
  name: 'thinpool_csi_requests_total',
  help: 'CSI RPCs answered, by method and gRPC status code',
  labelNames: ['method', 'code'] as const,
  registers: [registry],
});

export const csiLatency = new client.Histogram({
  name: 'thinpool_csi_request_seconds',
  help: 'Time to answer one CSI RPC, by method',
  labelNames: ['method'] as const,
  buckets: latencyBuckets,
  registers: [registry],
});

/** For the CSI request handler: one call per answered RPC. */
export function recordCsiRequest(method: string, code: string, seconds: number): void {
  csiRequests.inc({ method, code });
  csiLatency.observe({ method }, seconds);
}
