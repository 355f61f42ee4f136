// An in-process driver on a temporary pool, and promise-based CSI clients on its unix socket.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { type DriverConfig, defaultConfig } from '../../src/csi/config';
import { Driver } from '../../src/csi/driver';
import { grpcAddress, parseCsiEndpoint } from '../../src/csi/endpoint';
import { csiServices } from '../../src/csi/proto';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

type Request = Record<string, unknown>;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Reply = any;

export interface Client {
  call(method: string, request?: Request): Promise<Reply>;
  /** Collects every message of a server stream. */
  stream(method: string, request: Request): Promise<Reply[]>;
  close(): void;
}

export function connect(
  endpoint: string,
  service: 'Identity' | 'Controller' | 'Node' | 'SnapshotMetadata',
): Client {
  const Ctor = csiServices()[service];
  const client = new Ctor(
    grpcAddress(parseCsiEndpoint(endpoint)),
    grpc.credentials.createInsecure(),
  ) as unknown as Record<string, (...args: unknown[]) => unknown> & grpc.Client;
  return {
    call: (method, request = {}) =>
      new Promise((resolve, reject) => {
        client[method].call(client, request, (error: grpc.ServiceError | null, response: Reply) =>
          error ? reject(error) : resolve(response),
        );
      }),
    stream: (method, request) =>
      new Promise((resolve, reject) => {
        const out: Reply[] = [];
        const call = client[method].call(client, request) as grpc.ClientReadableStream<Reply>;
        call.on('data', (m: Reply) => out.push(m));
        call.on('error', reject);
        call.on('end', () => resolve(out));
      }),
    close: () => client.close(),
  };
}

export interface TestDriver {
  dir: string;
  config: DriverConfig;
  driver: Driver;
  identity: Client;
  controller: Client;
  node: Client;
  metadata: Client;
  /** Stops the driver (keeping the pool) and starts a new one on the same directories. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

export async function startDriver(overrides: Partial<DriverConfig> = {}, dir?: string): Promise<TestDriver> {
  const base = dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'thinpool-csi-'));
  const config = defaultConfig({
    endpoint: path.join(base, 'csi.sock'),
    poolDir: path.join(base, 'pool'),
    poolDataSizeBytes: 2 * GiB,
    nbdPort: 0,
    stateDir: path.join(base, 'node'),
    kubeletDirs: [path.join(base, 'kubelet')],
    nodeId: 'node-a',
    attachMethod: 'nbdfuse',
    ...overrides,
  });
  fs.mkdirSync(path.join(base, 'kubelet'), { recursive: true });
  const t: TestDriver = {
    dir: base,
    config,
    driver: new Driver(config),
    identity: connect(config.endpoint, 'Identity'),
    controller: connect(config.endpoint, 'Controller'),
    node: connect(config.endpoint, 'Node'),
    metadata: connect(config.endpoint, 'SnapshotMetadata'),
    async restart() {
      await t.driver.stop();
      for (const c of [t.identity, t.controller, t.node, t.metadata]) c.close();
      t.driver = new Driver(config);
      await t.driver.start();
      t.identity = connect(config.endpoint, 'Identity');
      t.controller = connect(config.endpoint, 'Controller');
      t.node = connect(config.endpoint, 'Node');
      t.metadata = connect(config.endpoint, 'SnapshotMetadata');
    },
    async close() {
      for (const c of [t.identity, t.controller, t.node, t.metadata]) c.close();
      await t.driver.stop();
      if (!dir) fs.rmSync(base, { recursive: true, force: true });
    },
  };
  await t.driver.start();
  return t;
}

export const mountCap = (fs_type = 'ext4', mode = 'SINGLE_NODE_WRITER') => ({
  mount: { fs_type, mount_flags: [] },
  access_mode: { mode },
});
export const blockCap = (mode = 'SINGLE_NODE_WRITER') => ({ block: {}, access_mode: { mode } });

/** Expects a promise to fail with this gRPC status code. */
export async function expectCode(promise: Promise<unknown>, code: grpc.status): Promise<grpc.ServiceError> {
  try {
    await promise;
  } catch (e) {
    const error = e as grpc.ServiceError;
    expect({ code: grpc.status[error.code], details: error.details }).toEqual({
      code: grpc.status[code],
      details: expect.any(String),
    });
    return error;
  }
  throw new Error(`expected ${grpc.status[code]}, but the call succeeded`);
}

export { grpc };
