// The backup tool's view of the driver: a CSI gRPC client (Controller + SnapshotMetadata) on the
// driver's endpoint, as any Kubernetes component would use it. It loads proto/csi.proto itself
// (same loader options as the driver) so that backup/ does not depend on the driver's code.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadAdminRoot, loadCsiRoot, serviceClient } from './csi-services';
import type { ByteRange } from './ranges';

/** proto/csi.proto of the package, found upwards from here (src/, dist/ or a bench build). */
export function packageFile(relative: string): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, relative);
    if (fs.existsSync(candidate)) return candidate;
    if (path.dirname(dir) === dir) throw new Error(`${relative} not found above ${__dirname}`);
  }
}

/** publish_context keys the driver returns from ControllerPublishVolume. */
export const PUBLISH_ENDPOINT = 'endpoint';
export const PUBLISH_EXPORT = 'export';

type Method = (...args: unknown[]) => unknown;
type Stub = grpc.Client & Record<string, Method>;

interface Services {
  Controller: grpc.ServiceClientConstructor;
  SnapshotMetadata: grpc.ServiceClientConstructor;
  Identity: grpc.ServiceClientConstructor;
}

let services: Services | undefined;
function loadServices(): Services {
  if (!services) {
    const root = loadCsiRoot(packageFile('proto/csi.json'));
    services = {
      Controller: serviceClient(root, 'Controller'),
      SnapshotMetadata: serviceClient(root, 'SnapshotMetadata'),
      Identity: serviceClient(root, 'Identity'),
    };
  }
  return services;
}

/** `unix:///path`, `unix:/path`, `/path` (a unix socket) or `host:port`. */
export function grpcTarget(endpoint: string): string {
  if (endpoint.startsWith('unix:')) return `unix://${endpoint.replace(/^unix:(\/\/)?/, '')}`;
  if (endpoint.startsWith('/') || endpoint.startsWith('.')) return `unix://${path.resolve(endpoint)}`;
  return endpoint;
}

export interface MetadataPage {
  volumeCapacityBytes: number;
  blockMetadataType: string;
  ranges: ByteRange[];
}

export interface SnapshotInfo {
  snapshotId: string;
  sourceVolumeId: string;
  sizeBytes: number;
}

export interface VolumeInfo {
  volumeId: string;
  capacityBytes: number;
}

interface MetadataMessage {
  block_metadata_type: string;
  volume_capacity_bytes: number;
  block_metadata: { byte_offset: number; size_bytes: number }[];
}

/** Codes worth retrying: the driver restarted or a call was cut short. */
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.ABORTED, grpc.status.DEADLINE_EXCEEDED]);

let adminService: grpc.ServiceClientConstructor | undefined;
function loadAdminService(): grpc.ServiceClientConstructor {
  adminService ??= serviceClient(
    loadAdminRoot(packageFile('proto/thinpool.proto')),
    'Volumes',
    'thinpool.v1',
  );
  return adminService;
}

export class CsiClient {
  private admin: Stub | undefined;
  private readonly controller: Stub;
  private readonly metadata: Stub;
  private readonly identity: Stub;

  constructor(
    readonly endpoint: string,
    private readonly options: { timeoutMs?: number; retries?: number } = {},
  ) {
    const s = loadServices();
    const target = grpcTarget(endpoint);
    const creds = grpc.credentials.createInsecure();
    this.controller = new s.Controller(target, creds) as unknown as Stub;
    this.metadata = new s.SnapshotMetadata(target, creds) as unknown as Stub;
    this.identity = new s.Identity(target, creds) as unknown as Stub;
  }

  private unary<T>(stub: Stub, method: string, request: object): Promise<T> {
    const deadline = Date.now() + (this.options.timeoutMs ?? 60_000);
    const once = () =>
      new Promise<T>((resolve, reject) =>
        stub[method].call(stub, request, { deadline }, (error: grpc.ServiceError | null, reply: T) =>
          error ? reject(describe(method, error)) : resolve(reply),
        ),
      );
    return retry(once, this.options.retries ?? 3);
  }

  /** The driver's own RPCs (proto/thinpool.proto), on the same endpoint. */
  private adminStub(): Stub {
    this.admin ??= new (loadAdminService())(
      grpcTarget(this.endpoint),
      grpc.credentials.createInsecure(),
    ) as unknown as Stub;
    return this.admin;
  }

  /** The era that began with the snapshot; undefined when the driver tracks no eras. */
  async snapshotEra(snapshotId: string): Promise<number | undefined> {
    try {
      const r = await this.unary<{ enabled: boolean; snapshot_era: number }>(
        this.adminStub(),
        'GetEraStatus',
        {
          snapshot_id: snapshotId,
        },
      );
      return r.enabled && r.snapshot_era > 0 ? r.snapshot_era : undefined;
    } catch (e) {
      if ((e as { code?: number }).code === grpc.status.UNIMPLEMENTED) return undefined;
      throw e;
    }
  }

  /** The ranges of a snapshot whose data was written in era `since` or later. */
  async writtenSinceEra(
    snapshotId: string,
    since: number,
  ): Promise<{ capacityBytes: number; ranges: ByteRange[] }> {
    const r = await this.unary<{ capacity_bytes: number; ranges: { offset: number; length: number }[] }>(
      this.adminStub(),
      'GetWrittenSinceEra',
      { snapshot_id: snapshotId, since_era: since },
    );
    return { capacityBytes: r.capacity_bytes, ranges: r.ranges };
  }

  async probe(): Promise<string> {
    const info = await this.unary<{ name: string; vendor_version: string }>(
      this.identity,
      'GetPluginInfo',
      {},
    );
    return `${info.name} ${info.vendor_version}`;
  }

  async getSnapshot(snapshotId: string): Promise<SnapshotInfo> {
    const reply = await this.unary<{
      snapshot: { snapshot_id: string; source_volume_id: string; size_bytes: number };
    }>(this.controller, 'GetSnapshot', { snapshot_id: snapshotId });
    return {
      snapshotId: reply.snapshot.snapshot_id,
      sourceVolumeId: reply.snapshot.source_volume_id,
      sizeBytes: reply.snapshot.size_bytes,
    };
  }

  async createVolume(request: {
    name: string;
    sizeBytes: number;
    fromSnapshot?: string;
    readOnly: boolean;
  }): Promise<VolumeInfo> {
    const reply = await this.unary<{ volume: { volume_id: string; capacity_bytes: number } }>(
      this.controller,
      'CreateVolume',
      {
        name: request.name,
        capacity_range: { required_bytes: request.sizeBytes, limit_bytes: request.sizeBytes },
        volume_capabilities: [blockCapability(request.readOnly)],
        parameters: {},
        volume_content_source: request.fromSnapshot
          ? { snapshot: { snapshot_id: request.fromSnapshot } }
          : null,
      },
    );
    return { volumeId: reply.volume.volume_id, capacityBytes: reply.volume.capacity_bytes };
  }

  /** CreateSnapshot (used by tests and the benchmark; backups take the snapshot id as given). */
  async createSnapshot(sourceVolumeId: string, name: string): Promise<string> {
    const reply = await this.unary<{ snapshot: { snapshot_id: string } }>(this.controller, 'CreateSnapshot', {
      source_volume_id: sourceVolumeId,
      name,
      parameters: {},
    });
    return reply.snapshot.snapshot_id;
  }

  async deleteSnapshot(snapshotId: string): Promise<void> {
    await this.unary(this.controller, 'DeleteSnapshot', { snapshot_id: snapshotId });
  }

  async listVolumeIds(): Promise<string[]> {
    const ids: string[] = [];
    let token = '';
    do {
      const reply = await this.unary<{ entries: { volume: { volume_id: string } }[]; next_token: string }>(
        this.controller,
        'ListVolumes',
        { max_entries: 0, starting_token: token },
      );
      ids.push(...reply.entries.map((e) => e.volume.volume_id));
      token = reply.next_token;
    } while (token);
    return ids;
  }

  async deleteVolume(volumeId: string): Promise<void> {
    await this.unary(this.controller, 'DeleteVolume', { volume_id: volumeId });
  }

  /** Grants `nodeId` access; returns the NBD endpoint and export name (which carries a secret). */
  async publish(
    volumeId: string,
    nodeId: string,
    readOnly: boolean,
  ): Promise<{ endpoint: string; exportName: string }> {
    const reply = await this.unary<{ publish_context: Record<string, string> }>(
      this.controller,
      'ControllerPublishVolume',
      {
        volume_id: volumeId,
        node_id: nodeId,
        volume_capability: blockCapability(readOnly),
        readonly: readOnly,
      },
    );
    const endpoint = reply.publish_context[PUBLISH_ENDPOINT];
    const exportName = reply.publish_context[PUBLISH_EXPORT];
    if (!endpoint || !exportName)
      throw new Error(
        `ControllerPublishVolume returned no ${PUBLISH_ENDPOINT}/${PUBLISH_EXPORT} in publish_context`,
      );
    return { endpoint, exportName };
  }

  async unpublish(volumeId: string, nodeId: string): Promise<void> {
    await this.unary(this.controller, 'ControllerUnpublishVolume', { volume_id: volumeId, node_id: nodeId });
  }

  /**
   * Every range of a GetMetadataAllocated (no base) or GetMetadataDelta stream, checking the
   * stream contract and resuming after the last range received if the stream breaks.
   */
  async metadataRanges(
    target: string,
    base: string | undefined,
    options: { maxResults?: number; onPage?: (p: MetadataPage) => void } = {},
  ): Promise<MetadataPage> {
    const all: ByteRange[] = [];
    let capacity = -1;
    let type = '';
    let startingOffset = 0;
    let failures = 0;
    for (;;) {
      try {
        await this.stream(target, base, startingOffset, options.maxResults ?? 1024, (page) => {
          if (capacity >= 0 && page.volumeCapacityBytes !== capacity)
            throw new Error('volume_capacity_bytes changed within the stream');
          capacity = page.volumeCapacityBytes;
          type = page.blockMetadataType;
          for (const r of page.ranges) {
            const last = all[all.length - 1];
            const floor = last ? last.offset + last.length : 0;
            if (r.length <= 0 || r.offset < floor || r.offset + r.length <= startingOffset)
              throw new Error(
                `SnapshotMetadata broke its contract: range [${r.offset}, +${r.length}) after ${floor}`,
              );
            if (r.offset + r.length > capacity)
              throw new Error('SnapshotMetadata range past the volume capacity');
            all.push(r);
          }
          options.onPage?.(page);
        });
        return { volumeCapacityBytes: Math.max(capacity, 0), blockMetadataType: type, ranges: all };
      } catch (e) {
        const code = (e as { code?: number }).code;
        if (code === undefined || !RETRYABLE.has(code) || ++failures > (this.options.retries ?? 3)) throw e;
        const last = all[all.length - 1];
        if (last) startingOffset = last.offset + last.length;
        await new Promise((r) => setTimeout(r, 200 * failures));
      }
    }
  }

  private stream(
    target: string,
    base: string | undefined,
    startingOffset: number,
    maxResults: number,
    onPage: (p: MetadataPage) => void,
  ): Promise<void> {
    const method = base ? 'GetMetadataDelta' : 'GetMetadataAllocated';
    const request = base
      ? {
          base_snapshot_id: base,
          target_snapshot_id: target,
          starting_offset: startingOffset,
          max_results: maxResults,
        }
      : { snapshot_id: target, starting_offset: startingOffset, max_results: maxResults };
    return new Promise((resolve, reject) => {
      const call = this.metadata[method].call(
        this.metadata,
        request,
      ) as grpc.ClientReadableStream<MetadataMessage>;
      call.on('data', (m: MetadataMessage) => {
        try {
          if (maxResults > 0 && m.block_metadata.length > maxResults)
            throw new Error(`SnapshotMetadata sent ${m.block_metadata.length} ranges, more than max_results`);
          onPage({
            volumeCapacityBytes: m.volume_capacity_bytes,
            blockMetadataType: m.block_metadata_type,
            ranges: m.block_metadata.map((b) => ({ offset: b.byte_offset, length: b.size_bytes })),
          });
        } catch (e) {
          call.cancel();
          reject(e);
        }
      });
      call.on('error', (e: grpc.ServiceError) => {
        if (e.code !== grpc.status.CANCELLED) reject(describe(method, e));
      });
      call.on('end', () => resolve());
    });
  }

  close(): void {
    this.controller.close();
    this.metadata.close();
    this.identity.close();
    this.admin?.close();
  }
}

function blockCapability(readOnly: boolean) {
  return { block: {}, access_mode: { mode: readOnly ? 'SINGLE_NODE_READER_ONLY' : 'SINGLE_NODE_WRITER' } };
}

/** A gRPC failure as one readable line that keeps its status code. */
function describe(method: string, error: grpc.ServiceError): Error & { code: number } {
  const e = new Error(
    `${method}: ${grpc.status[error.code] ?? error.code}: ${error.details || error.message}`,
  ) as Error & {
    code: number;
  };
  e.code = error.code;
  return e;
}

async function retry<T>(fn: () => Promise<T>, retries: number): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      const code = (e as { code?: number }).code;
      if (attempt >= retries || code === undefined || !RETRYABLE.has(code)) throw e;
      await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
    }
  }
}
