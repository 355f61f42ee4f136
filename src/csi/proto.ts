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

let cached: CsiServices | undefined;

/** The csi.v1 services (constructors double as clients; `.service` is the server definition). */
export function csiServices(): CsiServices {
  if (!cached) {
    const definition = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
    const root = grpc.loadPackageDefinition(definition) as unknown as { csi: { v1: CsiServices } };
    cached = root.csi.v1;
  }
  return cached;
}
