import fs from 'node:fs';
import type { Argv } from 'yargs';
import { NbdServer, type TlsMode } from '../../nbd';
import { Pool } from '../../thin/pool';
import { deviceExport } from '../../serve/device-exports';
import { logger } from '../../log';
import { CommandFailed } from '../errors';
import { type HostPort, parseHostPort } from '../../util/host-port';
import { registerNbdServerMetrics } from '../../metrics/nbd-metrics';
import { registerPoolMetrics } from '../../metrics/pool-metrics';
import { startMetricsServer } from '../../metrics/http';

const log = logger('cli');

interface ExportSpec {
  name: string;
  deviceId: number;
  readOnly: boolean;
}

function parseExport(text: string): ExportSpec {
  const m = /^([^=]+)=(\d+)(:ro)?$/.exec(text);
  if (!m) throw new CommandFailed(`--export "${text}" is not <name>=<device-id>[:ro]`);
  return { name: m[1], deviceId: Number(m[2]), readOnly: Boolean(m[3]) };
}

/** `flag`'s host:port, or a CommandFailed that names the flag. */
export function parseListen(text: string, flag = '--listen'): HostPort {
  try {
    return parseHostPort(text, flag);
  } catch (e) {
    throw new CommandFailed((e as Error).message);
  }
}

export function nbdCommands(yargs: Argv): Argv {
  return yargs
    .command(
      'serve <pool>',
      'serve thin devices over NBD (every device by its id unless --export is given)',
      (y) =>
        y
          .positional('pool', { type: 'string', demandOption: true, describe: 'pool directory' })
          .option('listen', { type: 'string', describe: 'host:port (default 127.0.0.1:10809)' })
          .option('socket', { type: 'string', describe: 'unix socket path instead of TCP' })
          .option('export', { type: 'string', array: true, describe: '<name>=<device-id>[:ro] (repeatable)' })
          .option('tls', { choices: ['off', 'optional', 'required'] as const, default: 'off' as TlsMode })
          .option('tls-cert', { type: 'string', describe: 'PEM server certificate' })
          .option('tls-key', { type: 'string', describe: 'PEM server key' })
          .option('tls-ca', {
            type: 'string',
            describe: 'PEM CA: clients must present a certificate it signed',
          })
          .option('commit-interval', {
            type: 'number',
            default: 1000,
            describe: 'milliseconds between periodic commits',
          })
          .option('sync-io-max', {
            type: 'number',
            default: 0,
            describe:
              'serve data I/O up to this many bytes synchronously (fast on cached data, stalls on misses)',
          })
          .option('metrics-listen', {
            type: 'string',
            describe: 'host:port for /metrics and /healthz (off by default)',
          })
          .conflicts('listen', 'socket'),
      async (argv) => {
        if (argv.tls !== 'off' && (!argv['tls-cert'] || !argv['tls-key'])) {
          throw new CommandFailed(`--tls ${argv.tls} needs --tls-cert and --tls-key`);
        }
        const pool = await Pool.open(argv.pool, {
          commitIntervalMs: argv['commit-interval'],
          syncIoMaxBytes: argv['sync-io-max'],
        });
        const read = (file?: string) => (file ? fs.readFileSync(file) : undefined);
        const server = new NbdServer({
          tls:
            argv.tls === 'off'
              ? undefined
              : {
                  mode: argv.tls,
                  cert: read(argv['tls-cert'])!,
                  key: read(argv['tls-key'])!,
                  ca: read(argv['tls-ca']),
                },
        });
        const ids = pool.listDevices().map((d) => d.id);
        const specs =
          argv.export?.map(parseExport) ??
          pool
            .listDevices()
            .map((d) => ({ name: String(d.id), deviceId: d.id, readOnly: d.labels.kind === 'snapshot' }));
        for (const spec of specs) server.addExport(deviceExport(pool, { ...spec, deltaBases: ids }));
        registerNbdServerMetrics(server);
        registerPoolMetrics(argv.pool, () => pool);
        const metricsAt = argv['metrics-listen']
          ? parseListen(String(argv['metrics-listen']), '--metrics-listen')
          : undefined;
        const metrics = metricsAt
          ? await startMetricsServer({ ...metricsAt, healthy: () => pool.readOnlyBecause === undefined })
          : undefined;
        const bound = await server.listen(
          argv.socket ? { path: argv.socket } : parseListen(argv.listen ?? '127.0.0.1:10809'),
        );
        log.info('serving NBD', {
          address: bound,
          exports: specs.map((s) => `${s.name}=${s.deviceId}${s.readOnly ? ':ro' : ''}`),
        });
        // Printed for scripts and tests that wait for the server to be ready.
        process.stdout.write(`listening ${'path' in bound ? bound.path : `${bound.host}:${bound.port}`}\n`);
        if (metricsAt && metrics)
          process.stdout.write(`metrics ${metricsAt.host}:${metrics.port}
`);
        await new Promise<void>((resolve) => {
          const stop = (signal: string) => {
            log.info(`${signal}: closing exports and committing the pool`);
            resolve();
          };
          process.once('SIGTERM', () => stop('SIGTERM'));
          process.once('SIGINT', () => stop('SIGINT'));
        });
        metrics?.server.close();
        await server.close();
        await pool.close();
      },
    )
    .demandCommand(1, 'name an nbd command');
}
