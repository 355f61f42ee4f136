// The NBD server: listeners (TCP and unix sockets), the export registry, connection limits,
// and an orderly shutdown. Knows nothing about what backs an export beyond BlockDevice.
import net from 'node:net';
import type tls from 'node:tls';
import { logger } from '../log';
import { Connection } from './connection';
import { type ExportDefinition, ExportRegistry } from './exports';
import { createTlsOptions, type TlsSettings } from './tls';

export interface NbdServerOptions {
  /** TLS via STARTTLS; omitted means mode 'off'. */
  tls?: TlsSettings;
  /** Connections beyond this are closed at once (default 1024). */
  maxConnections?: number;
  /** Whole-handshake deadline, TLS included (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Drop transmission-phase connections idle this long; 0 = never (default; kernel clients idle). */
  idleTimeoutMs?: number;
  /** Per connection: stop reading requests while this many bytes are in flight (default 64 MiB). */
  maxPendingBytesPerConnection?: number;
  /** Per connection: stop reading requests while this many are in flight (default 256). */
  maxRequestsInFlightPerConnection?: number;
  /** Export served to clients asking for the empty name. */
  defaultExport?: string;
}

export type ListenAddress = { host: string; port: number } | { path: string };
export type BoundAddress = { host: string; port: number } | { path: string };

const log = logger('nbd');

export class NbdServer {
  readonly exports = new ExportRegistry();
  private readonly listeners: net.Server[] = [];
  private readonly connections = new Set<Connection>();
  private readonly tlsOptions: tls.TlsOptions | undefined;
  private nextConnectionId = 1;
  private shuttingDown = false;

  constructor(private readonly options: NbdServerOptions = {}) {
    // Parse certificates now so that a bad key fails at start-up, not at the first client.
    this.tlsOptions = options.tls && options.tls.mode !== 'off' ? createTlsOptions(options.tls) : undefined;
    this.exports.defaultExportName = options.defaultExport;
  }

  /** Makes an export available to new connections. Throws on a duplicate or invalid definition. */
  addExport(definition: ExportDefinition): void {
    this.exports.add(definition);
    log.info('export added', {
      export: definition.name,
      sizeBytes: definition.device.sizeBytes,
      readOnly: definition.readOnly === true || definition.device.readOnly,
      access: definition.access.kind,
      metaContexts: Object.keys(definition.metaContexts ?? {}),
    });
  }

  /**
   * Withdraws an export and closes its clients once their in-flight requests are answered
   * (revoking access must not leave a connected client behind). Resolves when they are gone.
   */
  async removeExport(name: string, graceMs = 5000): Promise<boolean> {
    const definition = this.exports.remove(name);
    if (!definition) return false;
    const clients = [...this.connections].filter((c) => c.session?.export === definition);
    log.info('export removed', { export: name, disconnecting: clients.length });
    await Promise.all(clients.map((c) => c.closeGracefully(graceMs)));
    return true;
  }

  /** Number of open client connections, optionally only those using one export. */
  connectionCount(exportName?: string): number {
    if (exportName === undefined) return this.connections.size;
    return [...this.connections].filter((c) => c.session?.export.name === exportName).length;
  }

  /** Starts accepting on a TCP address or a unix socket path; may be called several times. */
  async listen(address: ListenAddress): Promise<BoundAddress> {
    if (this.shuttingDown) throw new Error('NBD server is closed');
    const server = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    server.on('error', (error) => log.error('listener error', { error: error.message }));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if ('path' in address) server.listen(address.path, () => resolve());
      else server.listen(address.port, address.host, () => resolve());
    });
    this.listeners.push(server);
    const bound = server.address();
    const result: BoundAddress =
      typeof bound === 'string' || bound === null
        ? { path: (address as { path: string }).path }
        : { host: bound.address, port: bound.port };
    log.info('NBD server listening', { ...result, tls: this.options.tls?.mode ?? 'off' });
    return result;
  }

  /** Stops listening, lets clients finish what is in flight, then closes them. */
  async close(graceMs = 5000): Promise<void> {
    this.shuttingDown = true;
    const closing = this.listeners.map(
      (server) => new Promise<void>((resolve) => server.close(() => resolve())),
    );
    this.listeners.length = 0;
    await Promise.all([...this.connections].map((c) => c.closeGracefully(graceMs)));
    await Promise.all(closing);
    log.info('NBD server closed');
  }

  private accept(socket: net.Socket): void {
    const maxConnections = this.options.maxConnections ?? 1024;
    if (this.shuttingDown || this.connections.size >= maxConnections) {
      log.warn('refusing connection', {
        remote: socket.remoteAddress,
        reason: this.shuttingDown ? 'shutting down' : 'connection limit',
        maxConnections,
      });
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    const connection = new Connection(
      socket,
      this.nextConnectionId++,
      {
        registry: this.exports,
        tlsMode: this.tlsOptions ? (this.options.tls?.mode ?? 'off') : 'off',
        tlsOptions: this.tlsOptions,
        handshakeTimeoutMs: this.options.handshakeTimeoutMs ?? 10_000,
        idleTimeoutMs: this.options.idleTimeoutMs ?? 0,
        limits: {
          maxPendingBytes: this.options.maxPendingBytesPerConnection ?? 64 * 1024 * 1024,
          maxInFlight: this.options.maxRequestsInFlightPerConnection ?? 256,
        },
        isShuttingDown: () => this.shuttingDown,
      },
      log,
    );
    this.connections.add(connection);
    void connection.run().finally(() => this.connections.delete(connection));
  }
}
