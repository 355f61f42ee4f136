import type { Argv } from 'yargs';
import { Pool } from '../../thin/pool';
import { checkMetadata } from '../../thin/check';
import { poolPaths } from '../../thin/pool-files';
import { formatSize, parseSize } from '../../util/size';
import { printResult } from '../output';
import { CommandFailed } from '../errors';

export function poolCommands(yargs: Argv): Argv {
  return yargs
    .command(
      'create <pool>',
      'create an empty pool (sparse metadata and data files in a directory)',
      (y) =>
        y
          .positional('pool', { type: 'string', demandOption: true, describe: 'pool directory' })
          .option('data-size', { type: 'string', describe: 'size of the data file, e.g. 10G' })
          .option('block-size', { type: 'string', default: '64k', describe: 'data block size: 64k..1G in 64k steps' })
          .option('metadata-size', { type: 'string', describe: 'size of the metadata file (default from the data size)' })
          .option('data-device', { type: 'string', describe: 'block device for data, instead of a file' })
          .option('metadata-device', { type: 'string', describe: 'block device for metadata, instead of a file' })
          .option('json', { type: 'boolean', default: false }),
      (argv) => {
        if (!argv['data-size'] && !argv['data-device']) throw new CommandFailed('give --data-size (or --data-device)');
        const pool = Pool.create(argv.pool, {
          dataSizeBytes: argv['data-size'] ? parseSize(argv['data-size'], '--data-size') : undefined,
          blockSizeBytes: parseSize(argv['block-size'], '--block-size'),
          metadataSizeBytes: argv['metadata-size'] ? parseSize(argv['metadata-size'], '--metadata-size') : undefined,
          dataDevice: argv['data-device'],
          metadataDevice: argv['metadata-device'],
        });
        try {
          printResult(statusView(pool, argv.json), argv.json);
        } finally {
          pool.close();
        }
      },
    )
    .command(
      'status <pool>',
      'print the pool superblock: transaction id, block size, space used, held metadata root, devices',
      (y) =>
        y
          .positional('pool', { type: 'string', demandOption: true })
          .option('json', { type: 'boolean', default: false }),
      (argv) => {
        const pool = Pool.open(argv.pool, { readOnly: true });
        try {
          printResult(statusView(pool, argv.json), argv.json);
        } finally {
          pool.close();
        }
      },
    )
    .command(
      'check <pool>',
      'verify every checksum, tree rule and reference count of the metadata (exit 1 on damage)',
      (y) =>
        y
          .positional('pool', { type: 'string', demandOption: true })
          .option('json', { type: 'boolean', default: false }),
      (argv) => {
        const report = checkMetadata(poolPaths(argv.pool).metadata);
        if (argv.json) printResult({ ...report }, true);
        else {
          for (const w of report.warnings) process.stderr.write(`warning: ${w}\n`);
          for (const e of report.errors) process.stderr.write(`error: ${e}\n`);
          process.stdout.write(
            `${report.ok ? 'clean' : 'DAMAGED'}: ${report.devices} devices, ${report.mappings} mappings, ` +
              `${report.metadataBlocksUsed} metadata and ${report.dataBlocksUsed} data blocks in use\n`,
          );
        }
        if (!report.ok) process.exitCode = 1;
      },
    )
    .demandCommand(1, 'name a pool command');
}

function statusView(pool: Pool, json: boolean): Record<string, unknown> {
  const s = pool.status();
  if (json) return { ...s };
  return {
    pool: s.path,
    'transaction id': s.transactionId,
    'data block size': formatSize(s.dataBlockBytes),
    'data blocks': `${s.dataBlocksUsed} used of ${s.dataBlocksTotal} (${formatSize(s.dataBlocksTotal * s.dataBlockBytes)})`,
    'metadata blocks': `${s.metadataBlocksUsed} used of ${s.metadataBlocksTotal} (${formatSize(s.metadataBlocksTotal * 4096)})`,
    'held metadata root': s.heldMetadataRoot ?? '-',
    devices: s.devices,
    'needs check': s.needsCheck ? 'yes' : 'no',
  };
}
