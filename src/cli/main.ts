#!/usr/bin/env node
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { log } from '../log';
import { poolCommands } from './commands/pool';
import { serve, serveCommand } from './commands/serve';
import { thinCommands } from './commands/thin';
import { nbdCommands } from './commands/nbd';
import { callCsi, csiCommand } from './commands/csi';
import { backupCommands } from './commands/backup';

// Every command is a thin file over the library; this only wires them and reports failures.
export async function main(args: string[]): Promise<void> {
  // One-shot commands speak through their output; the long-running ones log at info.
  if (!process.env.THINPOOL_LOG_LEVEL && !['serve', 'nbd'].includes(args[0])) log.level = 'warn';
  await yargs(args)
    .scriptName('thinpool')
    .command('pool', 'create, inspect, check and grow pools; metadata snapshots', poolCommands)
    .command('thin', 'thin devices: create, snapshot, delete, import/export images, delta', thinCommands)
    .command('nbd', 'serve thin devices over NBD', nbdCommands)
    .command(
      'csi <method> [request]',
      'call the running driver: any CSI RPC with a JSON request',
      csiCommand,
      (argv) => callCsi(argv as unknown as Parameters<typeof callCsi>[0]),
    )
    .command('backup', 'incremental snapshot backups through the CSI driver; restore', backupCommands)
    .command('serve', 'run the CSI driver (controller, node, or both)', serveCommand, (argv) => serve(argv))
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
