import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Argv } from 'yargs';
import { csiServices, type CsiServices } from '../../csi/proto';
import { grpcAddress, parseCsiEndpoint } from '../../csi/endpoint';
import { CommandFailed } from '../errors';

// A small CSI client for people: call any RPC of the driver with a JSON request and print the
// JSON answer (every message, for streaming calls).

type ServiceName = keyof CsiServices;

const SERVICES: ServiceName[] = ['Identity', 'Controller', 'Node', 'SnapshotMetadata'];

function findMethod(method: string): { service: ServiceName; stream: boolean } {
  const services = csiServices();
  for (const service of SERVICES) {
    const definition = services[service].service[method];
    if (definition) return { service, stream: definition.responseStream };
  }
  const known = SERVICES.flatMap((s) => Object.keys(services[s].service));
  throw new CommandFailed(`no CSI method "${method}"; known: ${known.join(', ')}`);
}

export function csiCommand(yargs: Argv): Argv {
  return yargs
    .positional('method', { type: 'string', demandOption: true, describe: 'RPC name, e.g. CreateVolume' })
    .positional('request', {
      type: 'string',
      default: '{}',
      describe: 'request as JSON (field names as in csi.proto)',
    })
    .option('endpoint', {
      type: 'string',
      default: path.resolve('var/csi.sock'),
      describe: 'CSI endpoint: unix socket path, unix:///path or tcp://host:port',
    })
    .option('timeout', { type: 'number', default: 60, describe: 'seconds' })
    .example('$0 csi Probe', '')
    .example(
      `$0 csi CreateVolume '{"name":"pvc-1","capacity_range":{"required_bytes":1073741824},"volume_capabilities":[{"mount":{"fs_type":"ext4"},"access_mode":{"mode":"SINGLE_NODE_WRITER"}}]}'`,
      '',
    );
}

export async function callCsi(argv: {
  method: string;
  request: string;
  endpoint: string;
  timeout: number;
}): Promise<void> {
  const { service, stream } = findMethod(argv.method);
  let request: unknown;
  try {
    request = JSON.parse(argv.request);
  } catch (e) {
    throw new CommandFailed(`the request is not JSON: ${(e as Error).message}`);
  }
  const Client = csiServices()[service];
  const client = new Client(grpcAddress(parseCsiEndpoint(argv.endpoint)), grpc.credentials.createInsecure());
  const deadline = new Date(Date.now() + argv.timeout * 1000);
  const fn = (client as unknown as Record<string, (...args: unknown[]) => unknown>)[argv.method].bind(client);
  try {
    await new Promise<void>((resolve, reject) => {
      const fail = (e: grpc.ServiceError) =>
        reject(
          new CommandFailed(
            `${argv.method} failed: ${grpc.status[e.code] ?? e.code}: ${e.details || e.message}`,
          ),
        );
      if (stream) {
        const call = fn(request, { deadline }) as grpc.ClientReadableStream<unknown>;
        call.on('data', (m) => process.stdout.write(JSON.stringify(m) + '\n'));
        call.on('error', fail);
        call.on('end', () => resolve());
      } else {
        fn(request, { deadline }, (e: grpc.ServiceError | null, response: unknown) => {
          if (e) return fail(e);
          process.stdout.write(JSON.stringify(response, null, 2) + '\n');
          resolve();
        });
      }
    });
  } finally {
    client.close();
  }
}
