import type { Argv } from 'yargs';
import { callVolumes, endpointOption } from '../admin-client';
import { CommandFailed } from '../errors';
import { printResult } from '../output';
import { jsonOption as json } from '../options';

// Era tracking of the running driver's pool (proto/thinpool.proto), for scripts and backup tools.

export function eraCommands(yargs: Argv): Argv {
  return yargs
    .option('endpoint', endpointOption)
    .command(
      'status',
      "the pool's current era and the data blocks it tracks",
      (y) => y.option('json', json),
      async (argv) => printResult({ ...(await callVolumes(argv.endpoint, 'GetEraStatus', {})) }, argv.json),
    )
    .command(
      'checkpoint',
      'end the current era and start the next (a snapshot does this too)',
      (y) => y.option('json', json),
      async (argv) => printResult({ ...(await callVolumes(argv.endpoint, 'CheckpointEra', {})) }, argv.json),
    )
    .command(
      'take-snap',
      'hold a metadata snapshot of the era data (era_invalidate --metadata-snapshot reads it)',
      (y) => y.option('json', json),
      async (argv) =>
        printResult({ ...(await callVolumes(argv.endpoint, 'TakeEraSnapshot', {})) }, argv.json),
    )
    .command(
      'drop-snap',
      'drop the held era metadata snapshot',
      (y) => y.option('json', json),
      async (argv) =>
        printResult(
          { ...(await callVolumes(argv.endpoint, 'DropEraSnapshot', {})), dropped: true },
          argv.json,
        ),
    )
    .command(
      'written-since <id>',
      'the byte ranges of a volume or snapshot written in an era or later',
      (y) =>
        y
          .positional('id', { type: 'string', demandOption: true, describe: 'CSI volume or snapshot id' })
          .option('era', { type: 'number', demandOption: true, describe: 'the first era to include' })
          .option('snapshot', { type: 'boolean', default: false, describe: 'the id is a snapshot id' })
          .option('json', json),
      async (argv) => {
        if (!Number.isInteger(argv.era) || argv.era < 1) throw new CommandFailed('--era must be 1 or more');
        const req = argv.snapshot
          ? { snapshot_id: argv.id, since_era: argv.era }
          : { volume_id: argv.id, since_era: argv.era };
        printResult({ ...(await callVolumes(argv.endpoint, 'GetWrittenSinceEra', req)) }, true);
      },
    )
    .demandCommand(1, 'name an era command (try --help)');
}
