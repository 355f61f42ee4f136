import type { Argv } from 'yargs';
import { Pool, PoolStatus } from '../../thin/pool';
import { checkMetadata } from '../../thin/check';
import { poolPaths } from '../../thin/pool-files';
import { importPoolXml } from '../pool-import';
import { formatSize, parseSize } from '../../util/size';
import { printResult } from '../output';
import { CommandFailed } from '../errors';
import { withPool } from '../pool-session';
import { poolEraCommands } from './pool-era';
import { jsonOption as json, poolArg } from '../options';

export function poolCommands(yargs: Argv): Argv {
  return yargs
    .command(
      'create <pool>',
      'create an empty pool (sparse metadata and data files in a directory)',
      (y) =>
        y
          .positional('pool', poolArg)
          .option('data-size', { type: 'string', describe: 'size of the data file, e.g. 10G' })
          .option('block-size', {
            type: 'string',
            default: '64k',
            describe: 'data block size: 64k..1G in 64k steps',
          })
          .option('metadata-size', {
            type: 'string',
            describe: 'size of the metadata file (default from the data size)',
          })
          .option('data-device', { type: 'string', describe: 'block device for data, instead of a file' })
          .option('metadata-device', {
            type: 'string',
            describe: 'block device for metadata, instead of a file',
          })
          .option('era', {
            type: 'boolean',
            default: false,
            describe: 'track the era of every data block (dm-era metadata beside the pool)',
          })
          .option('json', json),
      async (argv) => {
        if (!argv['data-size'] && !argv['data-device'])
          throw new CommandFailed('give --data-size (or --data-device)');
        const pool = await Pool.create(
          argv.pool,
          {
            dataSizeBytes: argv['data-size'] ? parseSize(argv['data-size'], '--data-size') : undefined,
            blockSizeBytes: parseSize(argv['block-size'], '--block-size'),
            metadataSizeBytes: argv['metadata-size']
              ? parseSize(argv['metadata-size'], '--metadata-size')
              : undefined,
            dataDevice: argv['data-device'],
            metadataDevice: argv['metadata-device'],
            era: argv.era,
          },
          { commitIntervalMs: 0 },
        );
        try {
          printResult(statusView(pool.status(), argv.json), argv.json);
        } finally {
          await pool.close();
        }
      },
    )
    .command(
      'status <pool>',
      'print the pool superblock: transaction id, block size, space used, held metadata root, devices',
      (y) => y.positional('pool', poolArg).option('json', json),
      (argv) =>
        withPool(argv.pool, { readOnly: true }, (pool) =>
          printResult(statusView(pool.status(), argv.json), argv.json),
        ),
    )
    .command(
      'check <pool>',
      'verify every checksum, tree rule and reference count of the metadata (exit 1 on damage)',
      (y) => y.positional('pool', poolArg).option('json', json),
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
    .command(
      'resize <pool>',
      'grow the data file (or pick up a grown data device) and the pool with it',
      (y) =>
        y
          .positional('pool', poolArg)
          .option('data-size', { type: 'string', describe: 'new data size' })
          .option('json', json),
      (argv) =>
        withPool(argv.pool, {}, async (pool) => {
          const size = argv['data-size'] ? parseSize(argv['data-size'], '--data-size') : undefined;
          printResult(statusView(await pool.resize(size), argv.json), argv.json);
        }),
    )
    .command(
      'import-xml <pool> <xml>',
      'make a pool from a thin_dump XML file (e.g. of an LVM thin pool): thin_restore writes the ' +
        'metadata, and its devices are adopted',
      (y) =>
        y
          .positional('pool', poolArg)
          .positional('xml', { type: 'string', demandOption: true, describe: 'thin_dump XML file' })
          .option('data-device', {
            type: 'string',
            describe: "the pool's existing data (block device or file); default: a new sparse file",
          })
          .option('metadata-size', {
            type: 'string',
            describe: 'size of the metadata file (default from the data size)',
          })
          .option('size', {
            type: 'string',
            array: true,
            describe:
              'virtual size of a device, ID=SIZE (dm-thin stores none; default: its last mapped block)',
          })
          .option('json', json),
      async (argv) => {
        const pool = await importPoolXml(argv.pool, argv.xml, {
          dataDevice: argv['data-device'],
          metadataSizeBytes: argv['metadata-size']
            ? parseSize(argv['metadata-size'], '--metadata-size')
            : undefined,
          sizes: (argv.size ?? []).map(parseDeviceSize),
        });
        try {
          printResult(statusView(pool.status(), argv.json), argv.json);
        } finally {
          await pool.close();
        }
      },
    )
    .command('msnap', 'reserve or release the metadata snapshot', (y) =>
      y
        .command(
          'reserve <pool>',
          'freeze the current metadata under a held root (one at a time)',
          (z) => z.positional('pool', poolArg).option('json', json),
          (argv) =>
            withPool(argv.pool, {}, async (pool) => {
              const heldRoot = await pool.reserveMetadataSnap();
              printResult({ heldMetadataRoot: heldRoot }, argv.json);
            }),
        )
        .command(
          'release <pool>',
          'drop the held metadata snapshot',
          (z) => z.positional('pool', poolArg).option('json', json),
          (argv) =>
            withPool(argv.pool, {}, async (pool) => {
              await pool.releaseMetadataSnap();
              printResult({ heldMetadataRoot: null }, argv.json);
            }),
        )
        .demandCommand(1, 'reserve or release?'),
    )
    .command('era', 'era tracking (dm-era): enable, status, checkpoint, snapshots, written blocks', (y) =>
      poolEraCommands(y),
    )
    .demandCommand(1, 'name a pool command');
}

function statusView(s: PoolStatus, asJson: boolean): Record<string, unknown> {
  if (asJson) return { ...s };
  return {
    pool: s.path,
    mode: s.mode,
    'transaction id': s.transactionId,
    'data block size': formatSize(s.dataBlockBytes),
    'data blocks': `${s.dataBlocksUsed} used of ${s.dataBlocksTotal} (${formatSize(s.dataBlocksTotal * s.dataBlockBytes)})`,
    'metadata blocks': `${s.metadataBlocksUsed} used of ${s.metadataBlocksTotal} (${formatSize(s.metadataBlocksTotal * 4096)})`,
    'held metadata root': s.heldMetadataRoot ?? '-',
    devices: s.devices,
    catalogue:
      `${s.catalogue.entries} entries` +
      (s.catalogue.adopted.length ? `; adopted at this open: ${s.catalogue.adopted.join(',')}` : '') +
      (s.catalogue.missing.length ? `; without a device: ${s.catalogue.missing.join(',')}` : ''),
    'needs check': s.needsCheck ? 'yes' : 'no',
    era: s.era ? `current ${s.era.currentEra}, ${s.era.nrBlocks} blocks` : 'not tracked',
  };
}

function parseDeviceSize(spec: string): { id: number; sizeBytes: number } {
  const m = /^(\d+)=(.+)$/.exec(spec);
  if (!m) throw new CommandFailed(`--size ${spec}: expected ID=SIZE, e.g. 1=10G`);
  return { id: Number(m[1]), sizeBytes: parseSize(m[2], `--size ${spec}`) };
}
