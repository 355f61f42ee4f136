// The driver process: opens (or creates) the pool, runs the NBD server, and serves the CSI
// services for its role on a unix socket. `stop()` is the graceful shutdown.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { logger } from '../log';
import { NbdServer } from '../nbd';
import { Pool } from '../thin/pool';
import { startMetricsServer } from '../metrics/http';
import { registerNbdServerMetrics } from '../metrics/nbd-metrics';
import { registerPoolMetrics } from '../metrics/pool-metrics';
import type http from 'node:http';
import { formatHostPort, parseHostPort } from '../util/host-port';
import { describeEndpoint, grpcAddress, parseCsiEndpoint } from './endpoint';
import { type DriverConfig, runsController, runsNode } from './config';
import { ControllerService } from './controller';
import { ExportGrants } from './exports';
import { OperationLocks } from './handler';
import { identityHandlers } from './identity';
import { NodeService } from './node';
import { adminServices, csiServices } from './proto';
import { EraAdmin } from './era-admin';
import { VolumeAdmin } from './volume-admin';
import { SnapshotMetadataService } from './snapshot-metadata';
import { Store } from './store';

const log = logger('csi');

export class Driver {
  readonly server = new grpc.Server();
  readonly locks = new OperationLocks();
  pool: Pool | undefined;
  nbd: NbdServer | undefined;
  nbdPort = 0;
  private ready = false;
  private stopped = false;
  private metrics: http.Server | undefined;
  /** Port of /metrics once it listens (0 when off). */
  metricsPort = 0;

  constructor(readonly config: DriverConfig) {}

  /** Binds the CSI socket first (Probe answers "not ready"), then opens the pool. */
  async start(options: { openPool?: boolean } = {}): Promise<void> {
    if (this.config.metricsListen) {
      const at = parseHostPort(this.config.metricsListen, '--metrics-listen');
      registerPoolMetrics(this.config.poolName, () => this.pool);
      const started = await startMetricsServer({ ...at, healthy: () => this.ready });
      this.metrics = started.server;
      this.metricsPort = started.port;
    }
    const services = csiServices();
    this.server.addService(
      services.Identity.service,
      identityHandlers(this.config, this.locks, () => this.ready),
    );
    if (runsNode(this.config)) {
      const node = new NodeService(this.config);
      await node.resume();
      this.server.addService(services.Node.service, node.handlers(this.locks));
    }
    const controllerReady = runsController(this.config);
    let controller: grpc.UntypedServiceImplementation = {};
    let metadata: grpc.UntypedServiceImplementation = {};
    let admin: grpc.UntypedServiceImplementation = {};
    if (controllerReady) {
      // Calls before the pool is open get UNAVAILABLE; the real handlers are swapped in later.
      const late = (name: string): grpc.UntypedHandleCall =>
        ((call: grpc.ServerUnaryCall<unknown, unknown>, callback?: grpc.sendUnaryData<unknown>) => {
          const impl = [controller, metadata, admin].find((h) => name in h)?.[name] as
            ((...a: unknown[]) => void) | undefined;
          if (impl) return impl(call, callback);
          const error = { code: grpc.status.UNAVAILABLE, details: 'the pool is not open yet' };
          if (callback) callback(error);
          else call.emit('error', error);
        }) as grpc.UntypedHandleCall;
      const proxy = (def: grpc.ServiceDefinition) =>
        Object.fromEntries(Object.keys(def).map((name) => [name, late(name)]));
      this.server.addService(services.Controller.service, proxy(services.Controller.service));
      this.server.addService(services.SnapshotMetadata.service, proxy(services.SnapshotMetadata.service));
      const volumes = adminServices().Volumes.service;
      this.server.addService(volumes, proxy(volumes));
    }
    const endpoint = parseCsiEndpoint(this.config.endpoint);
    if (endpoint.kind === 'unix') {
      fs.mkdirSync(path.dirname(endpoint.path), { recursive: true });
      fs.rmSync(endpoint.path, { force: true });
    }
    await new Promise<void>((resolve, reject) =>
      this.server.bindAsync(grpcAddress(endpoint), grpc.ServerCredentials.createInsecure(), (e) =>
        e ? reject(new Error(`CSI endpoint ${describeEndpoint(endpoint)}: ${e.message}`)) : resolve(),
      ),
    );
    log.info('CSI endpoint listening', {
      endpoint: describeEndpoint(endpoint),
      role: this.config.role,
      driver: this.config.driverName,
    });
    if (!controllerReady) {
      this.ready = true;
      return;
    }
    if (options.openPool === false) return;
    await this.openPool();
    const store = new Store(this.pool!, this.config.poolName);
    const grants = new ExportGrants(
      this.nbd!,
      this.pool!,
      formatHostPort({ host: this.config.nbdAdvertiseHost, port: this.nbdPort }),
      this.config.maxVolumeBytes,
    );
    const ctl = new ControllerService(this.config, store, grants);
    // Grants survive restarts: re-offer every recorded publication.
    for (const info of store.list('volume')) {
      for (const [node, record] of store.publications(info)) grants.grant(info, node, record);
    }
    controller = ctl.handlers(this.locks);
    metadata = new SnapshotMetadataService(this.config, store).handlers(this.locks);
    admin = { ...new VolumeAdmin(store).handlers(this.locks), ...new EraAdmin(store).handlers(this.locks) };
    this.ready = true;
    log.info('driver ready', { pool: this.config.poolDir, nbd: `${this.config.nbdHost}:${this.nbdPort}` });
  }

  /** Opens the pool (creating it on first start) and starts the NBD server. */
  async openPool(): Promise<void> {
    const exists = fs.existsSync(path.join(this.config.poolDir, 'metadata'));
    this.pool = exists
      ? await Pool.open(this.config.poolDir)
      : await Pool.create(this.config.poolDir, {
          dataSizeBytes: this.config.poolDataSizeBytes,
          era: this.config.poolEra,
        });
    if (!exists)
      log.info('created pool', { dir: this.config.poolDir, dataSizeBytes: this.config.poolDataSizeBytes });
    // Drop a metadata snapshot a crash may have left held (only SnapshotMetadata takes one).
    if (this.pool.status().heldMetadataRoot !== null && !this.pool.readOnlyBecause)
      await this.pool.releaseMetadataSnap();
    this.nbd = new NbdServer();
    registerNbdServerMetrics(this.nbd);
    const bound = await this.nbd.listen({ host: this.config.nbdHost, port: this.config.nbdPort });
    this.nbdPort = 'port' in bound ? bound.port : 0;
  }

  get isReady(): boolean {
    return this.ready;
  }

  /** Graceful stop: no new calls, exports closed, pool committed and closed. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.metrics?.close();
    this.ready = false;
    await new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
    await this.nbd?.close(2000);
    await this.pool?.close();
    const endpoint = parseCsiEndpoint(this.config.endpoint);
    if (endpoint.kind === 'unix') fs.rmSync(endpoint.path, { force: true });
    log.info('driver stopped');
  }
}
