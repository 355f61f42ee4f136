import type { Argv } from 'yargs';
import { callVolumes, endpointOption } from '../admin-client';
import { printResult } from '../output';

// Volume operations CSI has no call for, sent to the running controller (proto/thinpool.proto).

export function volumeCommands(yargs: Argv): Argv {
  return yargs
    .option('endpoint', endpointOption)
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
