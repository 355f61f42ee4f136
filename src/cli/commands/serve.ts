// `thinpool serve`: run the CSI driver. Configuration comes from, in rising priority, the
// defaults, an optional YAML file (--config), THINPOOL_* environment variables and flags.
import fs from 'node:fs';
import type { Argv } from 'yargs';
import YAML from 'yaml';
import { type DriverConfig, type Role, TOPOLOGY_NODE_KEY, defaultConfig } from '../../csi/config';
import { Driver } from '../../csi/driver';
import { parseCsiEndpoint } from '../../csi/endpoint';
import { logger } from '../../log';
import { parseSize } from '../../util/size';

const log = logger('serve');

// Flag name → config key, with how to read a string value.
const FIELDS: [string, keyof DriverConfig, 'string' | 'number' | 'size' | 'list'][] = [
  ['driver-name', 'driverName', 'string'],
  ['endpoint', 'endpoint', 'string'],
  ['pool-name', 'poolName', 'string'],
  ['pool-dir', 'poolDir', 'string'],
  ['pool-size', 'poolDataSizeBytes', 'size'],
  ['nbd-host', 'nbdHost', 'string'],
  ['nbd-port', 'nbdPort', 'number'],
  ['nbd-advertise-host', 'nbdAdvertiseHost', 'string'],
  ['node-id', 'nodeId', 'string'],
  ['max-volumes-per-node', 'maxVolumesPerNode', 'number'],
  ['state-dir', 'stateDir', 'string'],
  ['kubelet-dirs', 'kubeletDirs', 'list'],
  ['attach-method', 'attachMethod', 'string'],
  ['nbd-request-timeout', 'nbdRequestTimeoutSeconds', 'number'],
  ['nbd-dead-connection-timeout', 'nbdDeadConnectionTimeoutSeconds', 'number'],
  ['nbd-reconnect-helper', 'nbdReconnectHelper', 'string'],
  ['default-fs-type', 'defaultFsType', 'string'],
  ['block-metadata-type', 'blockMetadataType', 'string'],
  ['max-overprovision-ratio', 'maxOverprovisionRatio', 'number'],
  ['default-volume-size', 'defaultVolumeBytes', 'size'],
  ['max-volume-size', 'maxVolumeBytes', 'size'],
  ['metrics-listen', 'metricsListen', 'string'],
];

function convert(kind: 'string' | 'number' | 'size' | 'list', value: unknown, what: string): unknown {
  if (kind === 'list')
    return Array.isArray(value) ? value.map(String) : String(value).split(',').filter(Boolean);
  if (kind === 'size') return typeof value === 'number' ? value : parseSize(String(value), what);
  if (kind === 'number') {
    const n = Number(value);
    if (!Number.isFinite(n)) throw new RangeError(`${what}: ${String(value)} is not a number`);
    return n;
  }
  return String(value);
}

/** Builds the driver configuration from defaults, YAML file, environment and flags. */
export function loadConfig(
  flags: Record<string, unknown>,
  env: NodeJS.ProcessEnv = process.env,
): DriverConfig {
  const layered: Record<string, unknown> = {};
  const file = (flags.config as string | undefined) ?? env.THINPOOL_CONFIG;
  if (file) {
    const parsed = (YAML.parse(fs.readFileSync(file, 'utf8')) ?? {}) as Record<string, unknown>;
    for (const [flag, key, kind] of FIELDS) {
      const value = parsed[key] ?? parsed[flag];
      if (value !== undefined) layered[key] = convert(kind, value, `${file}: ${key}`);
    }
    if (parsed.topology) layered.topology = parsed.topology;
    if (parsed.role) layered.role = parsed.role;
  }
  for (const [flag, key, kind] of FIELDS) {
    const name = `THINPOOL_${flag.toUpperCase().replace(/-/g, '_')}`;
    if (env[name] !== undefined && env[name] !== '') layered[key] = convert(kind, env[name], name);
  }
  if (env.THINPOOL_ROLE) layered.role = env.THINPOOL_ROLE;
  for (const [flag, key, kind] of FIELDS) {
    if (flags[flag] !== undefined) layered[key] = convert(kind, flags[flag], `--${flag}`);
  }
  if (flags.role !== undefined) layered.role = flags.role;
  const topologyFlags = (flags.topology as string[] | undefined) ?? [];
  if (topologyFlags.length) {
    layered.topology = Object.fromEntries(
      topologyFlags.map((t) => {
        const cut = t.indexOf('=');
        if (cut <= 0) throw new RangeError(`--topology ${t}: expected key=value`);
        return [t.slice(0, cut), t.slice(cut + 1)];
      }),
    );
  }
  const config = defaultConfig(layered as Partial<DriverConfig>);
  if (!layered.topology) config.topology = { [TOPOLOGY_NODE_KEY]: config.nodeId };
  if (!['all', 'controller', 'node'].includes(config.role))
    throw new RangeError(`--role must be all, controller or node`);
  if (!['auto', 'kernel', 'nbdfuse'].includes(config.attachMethod))
    throw new RangeError(`--attach-method must be auto, kernel or nbdfuse`);
  parseCsiEndpoint(config.endpoint);
  for (const [flag, value] of [
    ['--nbd-request-timeout', config.nbdRequestTimeoutSeconds],
    ['--nbd-dead-connection-timeout', config.nbdDeadConnectionTimeoutSeconds],
  ] as const) {
    if (!Number.isInteger(value) || value < 1)
      throw new RangeError(`${flag} must be a whole number of seconds ≥ 1`);
  }
  return config;
}

export function serveCommand(yargs: Argv): Argv {
  let y = yargs
    .option('role', {
      type: 'string',
      choices: ['all', 'controller', 'node'],
      describe: 'which CSI services to run (default all)',
    })
    .option('config', { type: 'string', describe: 'YAML configuration file' })
    .option('topology', { type: 'string', array: true, describe: 'topology segment key=value (repeatable)' });
  for (const [flag] of FIELDS) y = y.option(flag, { type: 'string' });
  return y;
}

export async function serve(flags: Record<string, unknown>): Promise<void> {
  const config = loadConfig(flags);
  const driver = new Driver(config as DriverConfig & { role: Role });
  let stopping: Promise<void> | undefined;
  const stop = (signal: string): void => {
    if (stopping) return;
    log.info('shutting down', { signal });
    stopping = driver.stop().then(
      () => process.exit(0),
      (e: Error) => {
        log.error('shutdown failed', { error: e.message });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  await driver.start();
  await new Promise<never>(() => undefined);
}
