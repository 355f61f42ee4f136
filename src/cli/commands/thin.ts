import fs from 'node:fs';
import type { Argv } from 'yargs';
import { exportImage, importImage } from '../../thin/image-io';
import { parseSize } from '../../util/size';
import { printResult } from '../output';
import { withPool } from '../pool-session';
import { CommandFailed } from '../errors';
import { jsonOption as json, poolArg } from '../options';

const idArg = { type: 'number', demandOption: true, describe: 'thin device id (0..16777215)' } as const;

function parseLabels(labels: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const l of labels ?? []) {
    const eq = l.indexOf('=');
    if (eq <= 0) throw new CommandFailed(`label "${l}" is not key=value`);
    out[l.slice(0, eq)] = l.slice(eq + 1);
  }
  return out;
}

export function thinCommands(yargs: Argv): Argv {
  return yargs
    .command(
      'create <pool> <id>',
      'create an empty thin device',
      (y) =>
        y
          .positional('pool', poolArg)
          .positional('id', idArg)
          .option('size', { type: 'string', demandOption: true, describe: 'virtual size, e.g. 10G' })
          .option('label', { type: 'string', array: true, describe: 'key=value (repeatable)' })
          .option('json', json),
      (argv) =>
        withPool(argv.pool, {}, async (pool) => {
          const info = await pool.createThin(
            argv.id,
            parseSize(argv.size, '--size'),
            parseLabels(argv.label),
          );
          printResult({ ...info }, argv.json);
        }),
    )
    .command(
      'snap <pool> <id> <origin>',
      'snapshot a device (O(1); a snapshot of a snapshot is fine)',
      (y) =>
        y
          .positional('pool', poolArg)
          .positional('id', idArg)
          .positional('origin', idArg)
          .option('size', {
            type: 'string',
            describe: 'virtual size (default: the origin size; may only grow)',
          })
          .option('label', { type: 'string', array: true })
          .option('json', json),
      (argv) =>
        withPool(argv.pool, {}, async (pool) => {
          const info = await pool.createSnap(argv.id, argv.origin, {
            sizeBytes: argv.size ? parseSize(argv.size, '--size') : undefined,
            labels: parseLabels(argv.label),
          });
          printResult({ ...info }, argv.json);
        }),
    )
    .command(
      'delete <pool> <id>',
      'delete a device (its snapshots stay)',
      (y) => y.positional('pool', poolArg).positional('id', idArg).option('json', json),
      (argv) =>
        withPool(argv.pool, {}, async (pool) => {
          await pool.deleteDevice(argv.id);
          printResult({ deleted: argv.id }, argv.json);
        }),
    )
    .command(
      'revert <pool> <id>',
      'revert a device to one of its snapshots (O(1); the snapshot and the others stay)',
      (y) =>
        y
          .positional('pool', poolArg)
          .positional('id', idArg)
          .option('to', { ...idArg, describe: 'the snapshot to revert to' })
          .option('json', json),
      (argv) =>
        withPool(argv.pool, {}, async (pool) =>
          printResult({ ...(await pool.revertDevice(argv.id, argv.to)) }, argv.json),
        ),
    )
    .command(
      'resize <pool> <id>',
      'grow a device',
      (y) =>
        y
          .positional('pool', poolArg)
          .positional('id', idArg)
          .option('size', { type: 'string', demandOption: true })
          .option('json', json),
      (argv) =>
        withPool(argv.pool, {}, async (pool) =>
          printResult({ ...(await pool.resizeDevice(argv.id, parseSize(argv.size, '--size'))) }, argv.json),
        ),
    )
    .command(
      'list <pool>',
      'list devices',
      (y) => y.positional('pool', poolArg).option('json', json),
      (argv) =>
        withPool(argv.pool, { readOnly: true }, (pool) => {
          const devices = pool.listDevices();
          if (argv.json) return printResult({ devices }, true);
          for (const d of devices) {
            process.stdout.write(
              `${d.id}\tsize=${d.sizeBytes}\tmapped_blocks=${d.details.mappedBlocks}${d.origin !== undefined ? `\torigin=${d.origin}` : ''}\n`,
            );
          }
        }),
    )
    .command(
      'import <pool> <id> <file>',
      'copy an image file into a device (created at the file size if missing); zero blocks stay holes',
      (y) =>
        y
          .positional('pool', poolArg)
          .positional('id', idArg)
          .positional('file', { type: 'string', demandOption: true })
          .option('json', json),
      (argv) =>
        withPool(argv.pool, {}, async (pool) => {
          const size = Math.ceil(fs.statSync(argv.file).size / 512) * 512;
          if (!pool.catalogue.get(argv.id)) await pool.createThin(argv.id, Math.max(size, 512));
          const dev = pool.device(argv.id);
          if (dev.sizeBytes < size)
            throw new CommandFailed(
              `device ${argv.id} (${dev.sizeBytes} bytes) is smaller than ${argv.file} (${size})`,
            );
          printResult({ ...(await importImage(argv.file, dev, pool.blockBytes)) }, argv.json);
        }),
    )
    .command(
      'export <pool> <id> <file>',
      'write a device to a sparse image file (holes stay holes)',
      (y) =>
        y
          .positional('pool', poolArg)
          .positional('id', idArg)
          .positional('file', { type: 'string', demandOption: true })
          .option('json', json),
      (argv) =>
        withPool(argv.pool, { readOnly: true }, async (pool) =>
          printResult(
            { ...(await exportImage(pool.device(argv.id, { readOnly: true }), argv.file)) },
            argv.json,
          ),
        ),
    )
    .command(
      'delta <pool> <a> <b>',
      'ranges (in data blocks) where two devices differ',
      (y) =>
        y
          .positional('pool', poolArg)
          .positional('a', idArg)
          .positional('b', idArg)
          .option('metadata-snap', {
            type: 'boolean',
            default: false,
            describe: 'read the held metadata snapshot',
          })
          .option('json', json),
      (argv) =>
        withPool(argv.pool, { readOnly: true }, async (pool) => {
          const ranges = await pool.delta(argv.a, argv.b, { useMetadataSnap: argv['metadata-snap'] });
          if (argv.json) return printResult({ blockBytes: pool.blockBytes, ranges }, true);
          for (const r of ranges) process.stdout.write(`${r.kind}\t${r.begin}\t${r.length}\n`);
        }),
    )
    .demandCommand(1, 'name a thin command');
}
