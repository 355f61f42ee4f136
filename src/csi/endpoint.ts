// CSI endpoints as kubelet and sidecars write them: a unix socket (`unix:///csi/csi.sock`,
// `unix:/csi/csi.sock` or a bare path) or TCP (`tcp://host:port`, for a node plugin reached
// through a port forward, as in the VM tests).
import path from 'node:path';

export type CsiEndpoint = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export function parseCsiEndpoint(endpoint: string): CsiEndpoint {
  if (endpoint.startsWith('tcp://')) {
    const rest = endpoint.slice('tcp://'.length).replace(/\/$/, '');
    const cut = rest.lastIndexOf(':');
    const host = rest.slice(0, cut).replace(/^\[|\]$/g, '');
    const port = Number(rest.slice(cut + 1));
    if (cut <= 0 || !host || !Number.isInteger(port) || port < 0 || port > 65535)
      throw new RangeError(`CSI endpoint ${endpoint}: expected tcp://host:port`);
    return { kind: 'tcp', host, port };
  }
  const file = endpoint.startsWith('unix:') ? endpoint.replace(/^unix:(\/\/)?/, '') : endpoint;
  if (!file || /^[a-z]+:\/\//.test(file))
    throw new RangeError(`CSI endpoint ${endpoint}: expected unix:///path, a path or tcp://host:port`);
  return { kind: 'unix', path: path.resolve(file) };
}

/** The address gRPC binds or dials for an endpoint. */
export function grpcAddress(endpoint: CsiEndpoint): string {
  if (endpoint.kind === 'unix') return `unix://${endpoint.path}`;
  return endpoint.host.includes(':')
    ? `[${endpoint.host}]:${endpoint.port}`
    : `${endpoint.host}:${endpoint.port}`;
}

/** For logs and errors. */
export function describeEndpoint(endpoint: CsiEndpoint): string {
  return endpoint.kind === 'unix' ? endpoint.path : `tcp://${grpcAddress(endpoint)}`;
}
