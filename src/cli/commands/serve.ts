// `thinpool serve`: run the CSI driver. Configuration comes from, in rising priority, the
// defaults, an optional YAML file (--config), THINPOOL_* environment variables and flags.
import fs from 'node:fs';
import path from 'node:path';
import type { Argv } from 'yargs';
import YAML from 'yaml';
import { type DriverConfig, type Role, TOPOLOGY_NODE_KEY, defaultConfig } from '../../csi/config';
import { Driver } from '../../csi/driver';
import { parseCsiEndpoint } from '../../csi/endpoint';
import { logger } from '../../log';
import { formatSize, parseSize } from '../../util/size';

const log = logger('serve');

type Kind = 'string' | 'number' | 'size' | 'list' | 'boolean';

export interface Field {
  flag: string;
  key: keyof DriverConfig;
  /** How to read a string value (from the environment, a flag or the file). */
  kind: Kind;
  describe: string;
  /** The default as help shows it, where printing `defaultConfig`'s value would mislead. */
  shownDefault?: string;
}

// Every option of `serve` and the config key it sets; docs/csi.md's flag table says the same.
export const FIELDS: readonly Field[] = [
  { flag: 'driver-name', key: 'driverName', kind: 'string', describe: 'CSI driver name (GetPluginInfo)' },
  {
    flag: 'endpoint',
    key: 'endpoint',
    kind: 'string',
    describe: 'CSI endpoint: a unix socket (/path or unix:///path) or tcp://host:port',
  },
  { flag: 'pool-name', key: 'poolName', kind: 'string', describe: 'pool name, the first part of every id' },
  { flag: 'pool-dir', key: 'poolDir', kind: 'string', describe: 'pool directory, created on first start' },
  {
    flag: 'pool-size',
    key: 'poolDataSizeBytes',
    kind: 'size',
    describe: 'data size of a pool created on first start',
  },
  {
    flag: 'pool-era',
    key: 'poolEra',
    kind: 'boolean',
    describe: 'track the era of every data block (dm-era) in a pool created on first start',
  },
  { flag: 'nbd-host', key: 'nbdHost', kind: 'string', describe: 'address the NBD server listens on' },
  { flag: 'nbd-port', key: 'nbdPort', kind: 'number', describe: 'NBD server port (0: any free port)' },
  {
    flag: 'nbd-advertise-host',
    key: 'nbdAdvertiseHost',
    kind: 'string',
    describe: 'NBD host that nodes dial (put into publish contexts)',
    shownDefault: 'the --nbd-host value',
  },
  {
    flag: 'node-id',
    key: 'nodeId',
    kind: 'string',
    describe: 'node id reported by NodeGetInfo',
    shownDefault: 'the host name',
  },
  {
    flag: 'max-volumes-per-node',
    key: 'maxVolumesPerNode',
    kind: 'number',
    describe: 'NodeGetInfo max_volumes_per_node (0: the CO decides)',
  },
  { flag: 'state-dir', key: 'stateDir', kind: 'string', describe: 'node-side record of staged volumes' },
  {
    flag: 'kubelet-dirs',
    key: 'kubeletDirs',
    kind: 'list',
    describe: 'staging and target paths must lie below one of these',
  },
  {
    flag: 'attach-method',
    key: 'attachMethod',
    kind: 'string',
    describe: 'kernel (nbd-client), nbdfuse (nbdfuse + loop) or auto (kernel when /sys/module/nbd exists)',
  },
  {
    flag: 'nbd-request-timeout',
    key: 'nbdRequestTimeoutSeconds',
    kind: 'number',
    describe: 'kernel attach: nbd-client -t, seconds; an unanswered request is requeued',
  },
  {
    flag: 'nbd-dead-connection-timeout',
    key: 'nbdDeadConnectionTimeoutSeconds',
    kind: 'number',
    describe: 'kernel attach: seconds I/O waits for nbd-reconnect to reconnect before it fails',
  },
  {
    flag: 'nbd-reconnect-helper',
    key: 'nbdReconnectHelper',
    kind: 'string',
    describe: "the node's nbd-reconnect program (native/nbd-reconnect.c)",
  },
  {
    flag: 'default-fs-type',
    key: 'defaultFsType',
    kind: 'string',
    describe: 'ext4 or xfs, when the volume capability names none',
  },
  {
    flag: 'block-metadata-type',
    key: 'blockMetadataType',
    kind: 'string',
    describe: 'SnapshotMetadata ranges: VARIABLE_LENGTH, or FIXED_LENGTH (one tuple per data block)',
  },
  {
    flag: 'max-overprovision-ratio',
    key: 'maxOverprovisionRatio',
    kind: 'number',
    describe: "sum of volume sizes may reach this multiple of the pool's data size",
  },
  {
    flag: 'default-volume-size',
    key: 'defaultVolumeBytes',
    kind: 'size',
    describe: 'size of a volume created without a capacity range',
  },
  { flag: 'max-volume-size', key: 'maxVolumeBytes', kind: 'size', describe: 'largest volume' },
  {
    flag: 'metrics-listen',
    key: 'metricsListen',
    kind: 'string',
    describe: 'host:port serving /metrics and /healthz',
    shownDefault: 'off',
  },
  {
    flag: 'advertise-get-snapshot',
    key: 'advertiseGetSnapshot',
    kind: 'boolean',
    describe: 'list GET_SNAPSHOT in ControllerGetCapabilities (older sidecars crash on it; docs/install.md)',
  },
];

// What help adds to a description: how to write values yargs' own types do not name.
const KIND_HINTS: Partial<Record<Kind, string>> = {
  size: '[size: 4096, 64k, 10G, 10GiB]',
  list: '[list: comma-separated]',
};

/** A default for help: paths below the working directory (where the defaults live) as ./… */
function shownValue(value: unknown): string {
  const cwd = process.cwd() + path.sep;
  const one = (v: unknown) =>
    typeof v === 'string' && v.startsWith(cwd) ? `./${v.slice(cwd.length)}` : String(v);
  return Array.isArray(value) ? value.map(one).join(',') : one(value);
}

function convert(kind: Kind, value: unknown, what: string): unknown {
  if (kind === 'list')
    return Array.isArray(value) ? value.map(String) : String(value).split(',').filter(Boolean);
  if (kind === 'size') return typeof value === 'number' ? value : parseSize(String(value), what);
  if (kind === 'boolean') {
    if (typeof value === 'boolean') return value;
    const text = String(value).toLowerCase();
    if (text === 'true' || text === '1') return true;
    if (text === 'false' || text === '0') return false;
    throw new RangeError(`${what}: ${String(value)} is not true or false`);
  }
  if (kind === 'number') {
    const n = Number(value);
    // yargs has already made a flag's text a number: NaN when it is none, the text is gone.
    if (!Number.isFinite(n))
      throw new RangeError(
        typeof value === 'number' ? `${what} must be a number` : `${what}: ${String(value)} is not a number`,
      );
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
    for (const { flag, key, kind } of FIELDS) {
      const value = parsed[key] ?? parsed[flag];
      if (value !== undefined) layered[key] = convert(kind, value, `${file}: ${key}`);
    }
    if (parsed.topology) layered.topology = parsed.topology;
    if (parsed.role) layered.role = parsed.role;
  }
  for (const { flag, key, kind } of FIELDS) {
    const name = `THINPOOL_${flag.toUpperCase().replace(/-/g, '_')}`;
    if (env[name] !== undefined && env[name] !== '') layered[key] = convert(kind, env[name], name);
  }
  if (env.THINPOOL_ROLE) layered.role = env.THINPOOL_ROLE;
  for (const { flag, key, kind } of FIELDS) {
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
  // Help shows the defaults without giving yargs any: a yargs default would hide the
  // environment and the file, which rank below flags.
  const defaults = defaultConfig();
  let y = yargs
    .option('role', {
      type: 'string',
      choices: ['all', 'controller', 'node'],
      describe: 'which CSI services to run',
      defaultDescription: defaults.role,
    })
    .option('config', {
      type: 'string',
      describe: 'YAML configuration file (or THINPOOL_CONFIG); keys as in DriverConfig or the flag names',
    })
    .option('topology', {
      type: 'string',
      array: true,
      describe: 'topology segment key=value (repeatable)',
      defaultDescription: `${TOPOLOGY_NODE_KEY}=<node id>`,
    });
  for (const { flag, key, kind, describe, shownDefault } of FIELDS) {
    const value = defaults[key];
    y = y.option(flag, {
      type: kind === 'boolean' || kind === 'number' ? kind : 'string',
      describe: KIND_HINTS[kind] ? `${describe} ${KIND_HINTS[kind]}` : describe,
      defaultDescription: shownDefault ?? (kind === 'size' ? formatSize(value as number) : shownValue(value)),
    });
  }
  return y.epilogue(
    'Each option can also be set as THINPOOL_<OPTION> (e.g. THINPOOL_POOL_DIR) or in the YAML file of --config; flags win.',
  );
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
