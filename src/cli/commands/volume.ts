import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Argv } from 'yargs';
import { grpcAddress, parseCsiEndpoint } from '../../csi/endpoint';
import { adminServices } from '../../csi/proto';
import { CommandFailed } from '../errors';
import { printResult } from '../output';

// Volume operations CSI has no call for, sent to the running controller (proto/thinpool.proto).

type Call = (
  req: object,
  opts: grpc.CallOptions,
  cb: (e: grpc.ServiceError | null, r: object) => void,
) => void;

async function callVolumes(endpoint: string, method: string, request: object): Promise<object> {
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

export function volumeCommands(yargs: Argv): Argv {
  return yargs
    .option('endpoint', {
      type: 'string',
      default: path.resolve('var/csi.sock'),
      describe: 'the controller: unix socket path, unix:///path or tcp://host:port',
    })
    .command(
      'revert <volume-id>',
      'revert an unpublished volume to one of its snapshots (O(1); every snapshot stays)',
      (y) =>
        y
          .positional('volume-id', { type: 'string', demandOption: true, describe: 'CSI volume id' })
          .option('to', { type: 'string', demandOption: true, describe: 'CSI snapshot id of the volume' })
          .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
      async (argv) => {
        const r = await callVolumes(argv.endpoint, 'RevertVolume', {
          volume_id: argv.volumeId,
          snapshot_id: argv.to,
        });
        printResult({ volume_id: argv.volumeId, snapshot_id: argv.to, ...r }, argv.json);
      },
    )
    .demandCommand(1, 'name a volume command (try --help)');
}
