import type { Argv } from 'yargs';
import { EraTracker } from '../../thin/era/era-tracker';
import { ThinMetadata } from '../../thin/metadata';
import { poolPaths } from '../../thin/pool-files';
import { CommandFailed } from '../errors';
import { printResult } from '../output';
import { withPool } from '../pool-session';
import { jsonOption as json, poolArg } from '../options';

// Era tracking of a pool that no process has open (the running driver answers `thinpool era`).

export function poolEraCommands(yargs: Argv): Argv {
  return yargs
    .command(
      'enable <pool>',
      'start tracking the era of every data block (blocks written before count as never written)',
      (y) => y.positional('pool', poolArg).option('json', json),
      (argv) => {
        const paths = poolPaths(argv.pool);
        if (EraTracker.exists(paths.era)) throw new CommandFailed(`${argv.pool} already tracks eras`);
        const md = ThinMetadata.open(paths.metadata, { readOnly: true });
        try {
          EraTracker.format(paths.era, md.sb.dataSpaceMap.nrBlocks, md.sb.dataBlockSectors);
        } finally {
          md.close();
        }
        return withPool(argv.pool, {}, (pool) => printResult({ ...pool.era!.status() }, argv.json));
      },
    )
    .command(
      'status <pool>',
      'the current era, the blocks tracked and the held era snapshot',
      (y) => y.positional('pool', poolArg).option('json', json),
      (argv) =>
        withPool(argv.pool, { readOnly: true }, (pool) =>
          printResult({ ...requireEra(pool.era).status() }, argv.json),
        ),
    )
    .command(
      'checkpoint <pool>',
      'end the current era and start the next',
      (y) => y.positional('pool', poolArg).option('json', json),
      (argv) =>
        withPool(argv.pool, {}, (pool) => printResult({ era: requireEra(pool.era).checkpoint() }, argv.json)),
    )
    .command(
      'take-snap <pool>',
      'hold a metadata snapshot of the era data (era_invalidate --metadata-snapshot reads it)',
      (y) => y.positional('pool', poolArg).option('json', json),
      (argv) =>
        withPool(argv.pool, {}, (pool) => printResult({ ...requireEra(pool.era).takeSnapshot() }, argv.json)),
    )
    .command(
      'drop-snap <pool>',
      'drop the held era metadata snapshot',
      (y) => y.positional('pool', poolArg).option('json', json),
      (argv) =>
        withPool(argv.pool, {}, (pool) => {
          requireEra(pool.era).dropSnapshot();
          printResult({ dropped: true }, argv.json);
        }),
    )
    .command(
      'written-since <pool> <device>',
      'runs of virtual blocks of a device whose data was written in an era or later',
      (y) =>
        y
          .positional('pool', poolArg)
          .positional('device', { type: 'number', demandOption: true, describe: 'thin device id' })
          .option('era', { type: 'number', demandOption: true, describe: 'the first era to include' }),
      (argv) =>
        withPool(argv.pool, { readOnly: true }, async (pool) => {
          requireEra(pool.era);
          printResult({ ranges: await pool.writtenSinceEra(argv.device, argv.era) }, true);
        }),
    )
    .demandCommand(1, 'name an era command');
}

function requireEra(era: EraTracker | undefined): EraTracker {
  if (!era) throw new CommandFailed('this pool does not track eras (pool era enable turns it on)');
  return era;
}
