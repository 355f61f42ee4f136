#!/usr/bin/env node
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import type { Argv } from 'yargs';
import { log } from '../log';

// Command modules load when their command runs: the driver's modules (gRPC server, pool, NBD
// server) took about half a second of every `thinpool backup` start before any work began.
/* eslint-disable @typescript-eslint/no-require-imports -- a synchronous lazy load for yargs builders */
const commands = {
  pool: () => require('./commands/pool') as typeof import('./commands/pool'),
  thin: () => require('./commands/thin') as typeof import('./commands/thin'),
  nbd: () => require('./commands/nbd') as typeof import('./commands/nbd'),
  csi: () => require('./commands/csi') as typeof import('./commands/csi'),
  volume: () => require('./commands/volume') as typeof import('./commands/volume'),
  era: () => require('./commands/era') as typeof import('./commands/era'),
  backup: () => require('./commands/backup') as typeof import('./commands/backup'),
  serve: () => require('./commands/serve') as typeof import('./commands/serve'),
};
/* eslint-enable @typescript-eslint/no-require-imports */

// Every command is a thin file over the library; this only wires them and reports failures.
export async function main(args: string[]): Promise<void> {
  // One-shot commands speak through their output; the long-running ones log at info.
  if (!process.env.THINPOOL_LOG_LEVEL && !['serve', 'nbd'].includes(args[0])) log.level = 'warn';
  await yargs(args)
    .scriptName('thinpool')
    .command('pool', 'create, inspect, check and grow pools; metadata snapshots', (y: Argv) =>
      commands.pool().poolCommands(y),
    )
    .command('thin', 'thin devices: create, snapshot, delete, import/export images, delta', (y: Argv) =>
      commands.thin().thinCommands(y),
    )
    .command('nbd', 'serve thin devices over NBD', (y: Argv) => commands.nbd().nbdCommands(y))
    .command(
      'csi <method> [request]',
      'call the running driver: any CSI RPC with a JSON request',
      (y: Argv) => commands.csi().csiCommand(y),
      (argv) =>
        commands.csi().callCsi(argv as unknown as Parameters<ReturnType<typeof commands.csi>['callCsi']>[0]),
    )
    .command('volume', 'volume operations CSI has no call for (revert), through the controller', (y: Argv) =>
      commands.volume().volumeCommands(y),
    )
    .command(
      'era',
      "era tracking of the running driver's pool: status, checkpoint, written ranges",
      (y: Argv) => commands.era().eraCommands(y),
    )
    .command('backup', 'incremental snapshot backups through the CSI driver; restore', (y: Argv) =>
      commands.backup().backupCommands(y),
    )
    .command(
      'serve',
      'run the CSI driver (controller, node, or both)',
      (y: Argv) => commands.serve().serveCommand(y),
      (argv) => commands.serve().serve(argv),
    )
    .demandCommand(1, 'name a command (try --help)')
    .strict()
    .fail((msg, err) => {
      if (err) throw err;
      process.stderr.write(`thinpool: ${msg}\n`);
      process.exit(2);
    })
    .help()
    .parseAsync();
}

if (require.main === module) {
  main(hideBin(process.argv)).catch((e: Error) => {
    process.stderr.write(`thinpool: ${e.message}\n`);
    if (process.env.THINPOOL_DEBUG) process.stderr.write(`${e.stack}\n`);
    process.exit(1);
  });
}
