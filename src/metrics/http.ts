import http from 'node:http';
import { logger } from '../log';
import { registry } from './registry';

const log = logger('metrics');

export interface MetricsServerOptions {
  host: string;
  port: number;
  /** Liveness: resolves true when the process can serve (e.g. the pool is open). */
  healthy: () => boolean | Promise<boolean>;
}

/** `/metrics` (Prometheus text) and `/healthz` (200 ok / 503) on one small HTTP server. */
export async function startMetricsServer(
  options: MetricsServerOptions,
): Promise<{ server: http.Server; port: number }> {
  const server = http.createServer((req, res) => {
    void (async () => {
      try {
        if (req.url === '/metrics') {
          res.writeHead(200, { 'content-type': registry.contentType });
          res.end(await registry.metrics());
        } else if (req.url === '/healthz') {
          const ok = await options.healthy();
          res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' });
          res.end(ok ? 'ok\n' : 'not ready\n');
        } else {
          res.writeHead(404, { 'content-type': 'text/plain' });
          res.end('not found: try /metrics or /healthz\n');
        }
      } catch (e) {
        log.error('metrics request failed', { url: req.url, error: (e as Error).message });
        res.writeHead(500);
        res.end();
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  log.info('metrics and health endpoint up', { host: options.host, port });
  return { server, port };
}
