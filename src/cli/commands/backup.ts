// `thinpool backup`: incremental VolumeSnapshot backups through the CSI driver, and restores.
import type { Argv } from 'yargs';
import { AbortedError, createBackup } from '../../backup/create';
import { formatBytes, progressFor } from '../../backup/progress';
import { Repository } from '../../backup/repository';
import { restoreBackup } from '../../backup/restore';
import { parseSize } from '../../util/size';
import { CommandFailed } from '../errors';
import { printResult } from '../output';

const json = { type: 'boolean', default: false, describe: 'print a JSON summary on stdout' } as const;
const repoArg = { type: 'string', demandOption: true, describe: 'repository directory' } as const;
const quiet = { type: 'boolean', default: false, describe: 'no progress output' } as const;
const nodeId = {
  type: 'string',
  describe: 'node id to publish volumes to (default backup-<hostname>)',
} as const;
const connections = { type: 'number', default: 4, describe: 'NBD connections in parallel' } as const;

/**
 * Runs a long operation with SIGINT/SIGTERM turned into an abort, so the temporary volume is
 * unpublished and deleted before the process exits (a second signal exits at once).
 */
async function interruptible<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(130);
    process.stderr.write(`thinpool: ${signal}: cleaning up (again to exit at once)\n`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    return await fn(controller.signal);
  } catch (e) {
    if (e instanceof AbortedError || controller.signal.aborted) {
      process.stderr.write('thinpool: interrupted; the repository is unchanged\n');
      process.exit(130);
    }
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

function human(summary: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(summary)) {
    out[k] =
      typeof v === 'number' && /bytes|Bytes/.test(k) && !/PerSecond/.test(k) ? `${v} (${formatBytes(v)})` : v;
    if (k === 'bytesPerSecond' && typeof v === 'number') out[k] = `${formatBytes(v)}/s`;
  }
  return out;
}

async function fail<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof CommandFailed) throw e;
    throw new CommandFailed((e as Error).message);
  }
}

export function backupCommands(yargs: Argv): Argv {
  return yargs
    .command(
      'create',
      'back up a snapshot (full, or incremental from --base) into a repository',
      (y) =>
        y
          .option('driver', {
            type: 'string',
            demandOption: true,
            describe: 'CSI endpoint (unix socket path or unix:///path)',
          })
          .option('snapshot', { type: 'string', demandOption: true, describe: 'CSI snapshot id to back up' })
          .option('base', {
            type: 'string',
            describe: 'CSI snapshot id of an earlier backup: back up only the changes',
          })
          .option('since-era', {
            type: 'number',
            describe:
              'back up only the blocks written in this era or later (era tracking; the era of an earlier ' +
              "backup, from `backup list`; that backup's snapshot may be deleted)",
          })
          .option('repo', repoArg)
          .option('node-id', nodeId)
          .option('connections', connections)
          .option('compress', { type: 'string', choices: ['none', 'deflate', 'brotli'], default: 'none' })
          .option('chunk-size', { type: 'string', describe: 'chunk grid of a new repository (default 1M)' })
          .option('pack-size', {
            type: 'string',
            describe: 'chunks are stored in pack files of about this size (default 32M)',
          })
          .option('hash-threads', {
            type: 'number',
            describe: 'worker threads for SHA-256 (default 1 with up to 2 CPUs, else 2; 0: the main thread)',
          })
          .option('quiet', quiet)
          .option('json', json),
      (argv) =>
        fail(() =>
          interruptible(async (signal) => {
            const summary = await createBackup({
              driver: argv.driver,
              snapshotId: argv.snapshot,
              baseSnapshotId: argv.base,
              sinceEra: argv['since-era'],
              repoDir: argv.repo,
              nodeId: argv['node-id'],
              connections: argv.connections,
              compression: argv.compress as 'none' | 'deflate' | 'brotli',
              chunkBytes: argv['chunk-size'] ? parseSize(argv['chunk-size'], '--chunk-size') : undefined,
              packBytes: argv['pack-size'] ? parseSize(argv['pack-size'], '--pack-size') : undefined,
              hashThreads: argv['hash-threads'],
              progress: progressFor(process.stderr, argv.quiet),
              signal,
            });
            printResult(argv.json ? { ...summary } : human({ ...summary }), argv.json);
          }),
        ),
    )
    .command(
      'list',
      'list the backups in a repository, chain by chain',
      (y) => y.option('repo', repoArg).option('json', json),
      (argv) =>
        fail(async () => {
          const repo = await Repository.open(argv.repo);
          const all = await repo.listManifests();
          const rows = all.map((m) => ({
            id: m.id,
            kind: m.kind,
            parent: m.parent,
            snapshotId: m.snapshotId,
            sourceVolumeId: m.sourceVolumeId,
            era: m.era ?? null,
            createdAt: m.createdAt,
            volumeSizeBytes: m.volumeSizeBytes,
            rangeBytes: m.ranges.reduce((s, r) => s + r[1], 0),
            storedBytes: m.stats.bytesStored,
          }));
          if (argv.json) {
            process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
            return;
          }
          if (!rows.length) {
            process.stdout.write('no backups\n');
            return;
          }
          // Chains: each full backup followed by the increments on it, indented by depth.
          const depth = (m: (typeof rows)[number]): number => {
            let d = 0;
            for (let p = m.parent; p; p = rows.find((r) => r.id === p)?.parent ?? null) d++;
            return d;
          };
          const ordered: typeof rows = [];
          const visit = (parent: string | null) => {
            for (const r of rows.filter((x) => x.parent === parent)) {
              ordered.push(r);
              visit(r.id);
            }
          };
          visit(null);
          for (const r of rows) if (!ordered.includes(r)) ordered.push(r); // orphans (parent missing)
          for (const r of ordered) {
            const pad = '  '.repeat(depth(r));
            process.stdout.write(
              `${pad}${r.id}  ${r.kind.padEnd(11)}  ${formatBytes(r.rangeBytes).padStart(10)} read  ` +
                `${formatBytes(r.storedBytes).padStart(10)} stored  ${r.createdAt}  ${r.snapshotId}` +
                (r.era ? `  era ${r.era}` : '') +
                '\n',
            );
          }
        }),
    )
    .command(
      'show',
      'show one backup',
      (y) =>
        y
          .option('repo', repoArg)
          .option('backup', { type: 'string', demandOption: true })
          .option('chunks', { type: 'boolean', default: false, describe: 'include the chunk list' })
          .option('json', json),
      (argv) =>
        fail(async () => {
          const repo = await Repository.open(argv.repo);
          const m = await repo.readManifest(argv.backup);
          const chain = await repo.chain(m.id).then(
            (c) => c.map((x) => x.id),
            (e: Error) => `broken: ${e.message}`,
          );
          const { chunks, ranges, ...rest } = m;
          const shown = {
            ...rest,
            chain,
            rangeCount: ranges.length,
            rangeBytes: ranges.reduce((s, r) => s + r[1], 0),
            chunkCount: chunks.length,
            ...(argv.chunks ? { ranges, chunks } : {}),
          };
          printResult(shown, argv.json);
        }),
    )
    .command(
      'verify',
      'check every chunk checksum and that every chain is complete',
      (y) =>
        y
          .option('repo', repoArg)
          .option('backup', { type: 'string', array: true, describe: 'only these backups (default all)' })
          .option('quiet', quiet)
          .option('json', json),
      (argv) =>
        fail(async () => {
          const repo = await Repository.open(argv.repo);
          const progress = progressFor(process.stderr, argv.quiet);
          const all = await repo.listManifests();
          const ids = argv.backup ?? all.map((m) => m.id);
          const total = all
            .filter((m) => ids.includes(m.id))
            .reduce((s, m) => s + m.chunks.reduce((t, c) => t + (c[2] ? c[1] : 0), 0), 0);
          progress.start('verify', total);
          const report = await repo.verify({ ids: argv.backup, onBytes: (n) => progress.add(n) });
          progress.finish();
          if (argv.json)
            process.stdout.write(
              JSON.stringify({ ok: report.problems.length === 0, ...report }, null, 2) + '\n',
            );
          else {
            for (const p of report.problems) process.stdout.write(`${p.backup}: ${p.problem}: ${p.detail}\n`);
            process.stdout.write(
              `${report.backups} backups, ${report.chunksChecked} chunks (${formatBytes(report.bytesChecked)}) checked: ` +
                `${report.problems.length ? `${report.problems.length} problems` : 'ok'}` +
                `${report.orphanChunks ? `; ${report.orphanChunks} unreferenced chunks (swept by delete)` : ''}\n`,
            );
          }
          if (report.problems.length) process.exitCode = 1;
        }),
    )
    .command(
      'delete',
      'delete a backup (refused while later incrementals depend on it, unless --with-dependents)',
      (y) =>
        y
          .option('repo', repoArg)
          .option('backup', { type: 'string', demandOption: true })
          .option('with-dependents', { type: 'boolean', default: false })
          .option('json', json),
      (argv) =>
        fail(async () => {
          const repo = await Repository.open(argv.repo);
          const lock = await repo.lock(`backup delete ${argv.backup}`);
          try {
            await repo.readManifest(argv.backup);
            const dependents = repo.dependentsOf(argv.backup, await repo.listManifests());
            if (dependents.length && !argv['with-dependents'])
              throw new CommandFailed(
                `backup ${argv.backup} has dependents (${dependents.map((d) => d.id).join(', ')}); ` +
                  'delete them first or pass --with-dependents',
              );
            const ids = [argv.backup, ...dependents.map((d) => d.id)];
            await repo.deleteBackups(ids);
            const swept = await repo.sweep();
            printResult({ deleted: ids, chunksRemoved: swept.chunks, bytesFreed: swept.bytes }, argv.json);
          } finally {
            await lock.release();
          }
        }),
    )
    .command(
      'restore',
      'restore a backup chain into a new CSI volume or a sparse image file',
      (y) =>
        y
          .option('repo', repoArg)
          .option('backup', { type: 'string', demandOption: true })
          .option('driver', { type: 'string', describe: 'CSI endpoint (with --volume)' })
          .option('volume', { type: 'string', describe: 'name of the new volume' })
          .option('to-file', { type: 'string', describe: 'restore into this sparse image file instead' })
          .option('force', {
            type: 'boolean',
            default: false,
            describe: 'replace an existing --to-file image',
          })
          .option('node-id', nodeId)
          .option('connections', connections)
          .option('quiet', quiet)
          .option('json', json)
          .check((a) => {
            if (a['to-file'] ? a.volume || a.driver : !(a.volume && a.driver))
              throw new Error('give either --driver and --volume, or --to-file');
            return true;
          }),
      (argv) =>
        fail(() =>
          interruptible(async (signal) => {
            const summary = await restoreBackup({
              repoDir: argv.repo,
              backupId: argv.backup,
              target: argv['to-file']
                ? { kind: 'file', path: argv['to-file'] }
                : { kind: 'volume', driver: argv.driver!, volumeName: argv.volume! },
              nodeId: argv['node-id'],
              connections: argv.connections,
              force: argv.force,
              progress: progressFor(process.stderr, argv.quiet),
              signal,
            });
            printResult(argv.json ? { ...summary } : human({ ...summary }), argv.json);
          }),
        ),
    )
    .demandCommand(1, 'name a backup command (try --help)');
}
