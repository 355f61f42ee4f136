// Every thinpool command line in the manifests is accepted by the real binary (dist/cli/main.js,
// built by jest's global setup): the init container's `pool create` / `pool resize` run against a
// temporary directory, and `serve` starts with the controller's and the node's arguments (paths
// moved under a temporary directory, ports made ephemeral) until it reports ready.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { makeTempDir } from '../helpers/tmp';
import { CLI } from '../helpers/cli';
import yargs from 'yargs';
import { loadConfig, serveCommand } from '../../src/cli/commands/serve';
import { DEPLOY, K8sObject, parseManifests, yamlFiles } from './helpers';

/**
 * Flags the manifests pass that `thinpool serve` does not have yet (asked for in the deploy
 * work's report). While one is missing from `serve --help`, it is dropped before starting serve;
 * once serve has it, it is passed like every other flag.
 */
type Container = { name: string; image: string; args?: string[]; command?: string[] };

const objects = yamlFiles(DEPLOY).flatMap((f) => parseManifests(fs.readFileSync(f, 'utf8'), f));
const thinpoolContainers = (kind: string): Container[] => {
  const o = objects.find((x) => x.kind === kind) as K8sObject & {
    spec: { template: { spec: { containers: Container[]; initContainers?: Container[] } } };
  };
  const spec = o.spec.template.spec;
  return [...(spec.initContainers ?? []), ...spec.containers].filter((c) => /thinpool-csi:/.test(c.image));
};

function serveFlags(): Set<string> {
  const help = spawnSync(process.execPath, [CLI, 'serve', '--help'], { encoding: 'utf8' });
  expect(help.status).toBe(0);
  return new Set([...help.stdout.matchAll(/^\s+--([a-z][a-z-]*)/gm)].map((m) => m[1]));
}

const flagName = (arg: string): string => arg.replace(/^--/, '').split('=')[0];

/** Moves absolute paths under `root` and makes listeners local and ephemeral. */
function localize(args: string[], root: string): string[] {
  return args.map((arg) => {
    const m = /^(--[a-z-]+)=(.*)$/.exec(arg);
    if (!m) return arg.startsWith('/') ? path.join(root, arg) : arg;
    const [, flag, value] = m;
    if (flag === '--nbd-port') return `${flag}=0`;
    if (flag === '--nbd-host') return `${flag}=127.0.0.1`;
    if (flag === '--metrics-listen') return `${flag}=127.0.0.1:0`;
    if (flag === '--node-id') return `${flag}=${value.replace('$(NODE_NAME)', 'test-node')}`;
    if (value.startsWith('/')) return `${flag}=${value.split(',').map((p) => path.join(root, p)).join(',')}`;
    return arg;
  });
}

/** Starts `thinpool serve` and resolves with its output once `ready` appears in it; then stops it. */
async function startAndStop(args: string[], ready: RegExp): Promise<{ code: number | null; output: string }> {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, THINPOOL_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`no ${ready} within 30 s:\n${output}`));
    }, 30000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (ready.test(output)) child.kill('SIGTERM');
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (!ready.test(output)) reject(new Error(`serve exited (${code}) before ${ready}:\n${output}`));
      else resolve({ code, output });
    });
  });
}

describe('thinpool command lines in the manifests', () => {
  const flags = serveFlags();

  test('every serve flag exists (or is listed as pending)', () => {
    const used = [...thinpoolContainers('StatefulSet'), ...thinpoolContainers('DaemonSet')]
      .filter((c) => c.args?.[0] === 'serve')
      .flatMap((c) => c.args!.slice(1).map(flagName));
    expect(used.length).toBeGreaterThan(15);
    expect(used.filter((f) => !flags.has(f))).toEqual([]);
  });

  test('controller and nodes agree on the topology; nodes dial the pool Service', () => {
    const config = (kind: string) => {
      const serve = thinpoolContainers(kind).find((c) => c.name === 'thinpool')!;
      const args = serve.args!.slice(1).filter((a) => flags.has(flagName(a)));
      return loadConfig(serveCommand(yargs(args)).parseSync() as Record<string, unknown>, {});
    };
    const controller = config('StatefulSet');
    const node = config('DaemonSet');
    expect(controller.role).toBe('controller');
    expect(node.role).toBe('node');
    // Volumes are reachable from every node over NBD: one shared segment, not the node's name.
    expect(controller.topology).toEqual({ 'topology.thinpool.csi.dev/pool': 'default' });
    expect(node.topology).toEqual(controller.topology);
    expect(node.driverName).toBe(controller.driverName);
    expect(controller.nbdAdvertiseHost).toBe('thinpool-csi-pool.thinpool-csi.svc');
    expect(node.kubeletDirs).toEqual(['/var/lib/kubelet']);
  });

  test('the init container creates the pool, then grows it on the next start', async () => {
    const { dir, cleanup } = makeTempDir('thinpool-deploy-');
    try {
      const init = thinpoolContainers('StatefulSet').find((c) => c.name === 'prepare-pool')!;
      expect(init.command).toEqual(['/bin/sh', '-ec']);
      const script = init.args![0];
      const runs = [...script.matchAll(/exec node \/app\/dist\/cli\/main\.js (.*)$/gm)].map((m) => m[1].split(' '));
      expect(runs.map((r) => r.slice(0, 2).join(' '))).toEqual(['pool resize', 'pool create']);
      const [resize, create] = runs.map((r) => localize(r, dir));
      const poolDir = path.join(dir, 'var/lib/thinpool/pool');
      // The script's own shell logic, with the paths moved: create (no metadata yet), then resize.
      expect(script).toContain('if [ -e /var/lib/thinpool/pool/metadata ]');
      const created = spawnSync(process.execPath, [CLI, ...create, '--json'], { encoding: 'utf8' });
      expect(created.stderr).toBe('');
      expect(created.status).toBe(0);
      expect(fs.existsSync(path.join(poolDir, 'metadata'))).toBe(true);
      const resized = spawnSync(process.execPath, [CLI, ...resize, '--json'], { encoding: 'utf8' });
      expect(resized.stderr).toBe('');
      expect(resized.status).toBe(0);
    } finally {
      cleanup();
    }
  });

  test('serve starts with the controller arguments and opens the pool', async () => {
    const { dir, cleanup } = makeTempDir('thinpool-deploy-');
    try {
      const init = thinpoolContainers('StatefulSet').find((c) => c.name === 'prepare-pool')!;
      const create = [...init.args![0].matchAll(/exec node \/app\/dist\/cli\/main\.js (pool create .*)$/gm)][0][1];
      expect(spawnSync(process.execPath, [CLI, ...localize(create.split(' '), dir)]).status).toBe(0);
      const serve = thinpoolContainers('StatefulSet').find((c) => c.name === 'thinpool')!;
      const args = localize(serve.args!, dir).filter((a) => flags.has(flagName(a)) || !a.startsWith('--'));
      expect(args).toContain('--role=controller');
      const { code, output } = await startAndStop(args, /driver ready/);
      expect(output).toContain('thinpool.csi.dev');
      expect(code).toBe(0);
    } finally {
      cleanup();
    }
  });

  test('serve starts with the node plugin arguments', async () => {
    const { dir, cleanup } = makeTempDir('thinpool-deploy-');
    try {
      const serve = thinpoolContainers('DaemonSet').find((c) => c.name === 'thinpool')!;
      const args = localize(serve.args!, dir).filter((a) => flags.has(flagName(a)) || !a.startsWith('--'));
      expect(args).toContain('--role=node');
      const { code } = await startAndStop(args, /CSI endpoint listening/);
      expect(code).toBe(0);
    } finally {
      cleanup();
    }
  });
});
