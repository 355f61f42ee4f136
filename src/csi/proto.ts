// Loads proto/csi.proto once. The options are fixed here so every part of the driver sees the
// same shapes: field names as in the .proto (snake_case), int64 as JS numbers (sizes stay far
// below 2^53), enums as their names, defaults filled in, and a virtual field per oneof naming
// the member that is set (e.g. `access_type: 'mount'`).
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

export const PROTO_FILE = path.resolve(__dirname, '../../proto/csi.proto');

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

export interface CsiServices {
  Identity: grpc.ServiceClientConstructor;
  Controller: grpc.ServiceClientConstructor;
  Node: grpc.ServiceClientConstructor;
  SnapshotMetadata: grpc.ServiceClientConstructor;
}

const loaded = new Map<string, unknown>();

// One load per file; `pkg` is the dotted package name whose services are returned.
function services<T>(file: string, pkg: string): T {
  if (!loaded.has(file)) {
    let at: unknown = grpc.loadPackageDefinition(protoLoader.loadSync(file, LOADER_OPTIONS));
    for (const part of pkg.split('.')) at = (at as Record<string, unknown>)[part];
    loaded.set(file, at);
  }
  return loaded.get(file) as T;
}

/** The csi.v1 services (constructors double as clients; `.service` is the server definition). */
export function csiServices(): CsiServices {
  return services<CsiServices>(PROTO_FILE, 'csi.v1');
}

export const ADMIN_PROTO_FILE = path.resolve(__dirname, '../../proto/thinpool.proto');

export interface AdminServices {
  Volumes: grpc.ServiceClientConstructor;
}

/** thinpool.v1: the controller's own RPCs (proto/thinpool.proto), same loader options. */
export function adminServices(): AdminServices {
  return services<AdminServices>(ADMIN_PROTO_FILE, 'thinpool.v1');
}
