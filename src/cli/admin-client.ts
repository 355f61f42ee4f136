// A client of the controller's own RPCs (proto/thinpool.proto) for the CLI.
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { grpcAddress, parseCsiEndpoint } from '../csi/endpoint';
import { adminServices } from '../csi/proto';
import { CommandFailed } from './errors';

export const endpointOption = {
  type: 'string',
  default: path.resolve('var/csi.sock'),
  describe: 'the controller: unix socket path, unix:///path or tcp://host:port',
} as const;

type Call = (
  req: object,
  opts: grpc.CallOptions,
  cb: (e: grpc.ServiceError | null, r: object) => void,
) => void;

/** One unary call of the thinpool.v1.Volumes service; a failure names the method and the gRPC code. */
export async function callVolumes(endpoint: string, method: string, request: object): Promise<object> {
  const client = new (adminServices().Volumes)(
    grpcAddress(parseCsiEndpoint(endpoint)),
    grpc.credentials.createInsecure(),
  );
  const fn = (client as unknown as Record<string, Call>)[method].bind(client);
  try {
    return await new Promise((resolve, reject) =>
      fn(request, { deadline: new Date(Date.now() + 120_000) }, (e, r) =>
        e
          ? reject(
              new CommandFailed(
                `${method} failed: ${grpc.status[e.code] ?? e.code}: ${e.details || e.message}`,
              ),
            )
          : resolve(r),
      ),
    );
  } finally {
    client.close();
  }
}
