// CSI endpoints as kubelet and sidecars write them: a unix socket (`unix:///csi/csi.sock`,
// `unix:/csi/csi.sock` or a bare path) or TCP (`tcp://host:port`, for a node plugin reached
// through a port forward, as in the VM tests).
import path from 'node:path';
import { formatHostPort, parseHostPort } from '../util/host-port';

export type CsiEndpoint = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export function parseCsiEndpoint(endpoint: string): CsiEndpoint {
  if (endpoint.startsWith('tcp://')) {
    try {
      return { kind: 'tcp', ...parseHostPort(endpoint.slice('tcp://'.length).replace(/\/$/, '')) };
    } catch {
      throw new RangeError(`CSI endpoint ${endpoint}: expected tcp://host:port`);
    }
  }
  const file = endpoint.startsWith('unix:') ? endpoint.replace(/^unix:(\/\/)?/, '') : endpoint;
  if (!file || /^[a-z]+:\/\//.test(file))
    throw new RangeError(`CSI endpoint ${endpoint}: expected unix:///path, a path or tcp://host:port`);
  return { kind: 'unix', path: path.resolve(file) };
}

/** The address gRPC binds or dials for an endpoint. */
export function grpcAddress(endpoint: CsiEndpoint): string {
  if (endpoint.kind === 'unix') return `unix://${endpoint.path}`;
  return formatHostPort(endpoint);
}

/** For logs and errors. */
export function describeEndpoint(endpoint: CsiEndpoint): string {
  return endpoint.kind === 'unix' ? endpoint.path : `tcp://${grpcAddress(endpoint)}`;
}
