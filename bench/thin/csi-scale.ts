// The device set at scale, through the CSI socket of a real driver process (`serve --role all`):
// CreateSnapshot of one volume until the pool holds --snapshots devices (100,000 by default),
// then ListSnapshots page by page, DeleteSnapshot of them all, and the pool's open time at the
// largest size. The peer is the engine itself at a small pool: the last 1,000 snapshots against
// the first 1,000 (the catalogue and the device trees must not make a change cost more as they grow).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { LOADER_OPTIONS, type CsiServices } from '../../src/csi/proto';
import { Pool } from '../../src/thin/pool';
import { log } from '../../src/log';
import { machineLine, percentile, repoRoot, updateBenchmarkSection } from '../report';

log.level = 'warn';

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const SNAPSHOTS = arg('snapshots', 100_000);
const WINDOW = Math.min(1000, Math.floor(SNAPSHOTS / 4));
const PAGE = 500;
const writeDocs = !process.argv.includes('--no-docs');
const CLI = path.join(repoRoot, 'dist', 'cli', 'main.js');
// --profile DIR: the driver writes a V8 CPU profile there when it stops (one per start).
const profileAt = process.argv.indexOf('--profile');
const profileArgs = profileAt > 0 ? ['--cpu-prof', '--cpu-prof-dir', process.argv[profileAt + 1]] : [];

// The bench is compiled apart from the driver, so the proto is found from the repository root.
const services = (
  grpc.loadPackageDefinition(
    protoLoader.loadSync(path.join(repoRoot, 'proto', 'csi.proto'), LOADER_OPTIONS),
  ) as unknown as { csi: { v1: CsiServices } }
).csi.v1;
const children = new Set<ChildProcess>();
process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));

type Call = (method: string, request: object) => Promise<Record<string, unknown>>;

function controller(socket: string): { call: Call; close(): void } {
  const client = new services.Controller(
    `unix:${socket}`,
    grpc.credentials.createInsecure(),
  ) as unknown as grpc.Client &
    Record<string, (r: object, cb: (e: Error | null, v: Record<string, unknown>) => void) => void>;
  return {
    call: (method, request) =>
      new Promise((resolve, reject) =>
        client[method].call(client, request, (e: Error | null, v: Record<string, unknown>) =>
          e ? reject(e) : resolve(v),
        ),
      ),
    close: () => client.close(),
  };
}

async function startDriver(dir: string, socket: string): Promise<{ child: ChildProcess; readyMs: number }> {
  const t0 = performance.now();
  const child = spawn(
    process.execPath,
    [
      ...profileArgs,
      CLI,
      'serve',
      '--role',
      'all',
      '--pool-dir',
      path.join(dir, 'pool'),
      '--endpoint',
      `unix://${socket}`,
    ],
    { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, THINPOOL_LOG_LEVEL: 'warn' } },
  );
  children.add(child);
  child.once('exit', () => children.delete(child));
  const identity = new services.Identity(
    `unix:${socket}`,
    grpc.credentials.createInsecure(),
  ) as unknown as grpc.Client & {
    Probe(r: object, cb: (e: Error | null, v: { ready?: { value: boolean } }) => void): void;
  };
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the driver exited (${child.exitCode})`);
    const ready = await new Promise<boolean>((resolve) =>
      identity.Probe({}, (e, v) => resolve(!e && v.ready?.value === true)),
    );
    if (ready) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  identity.close();
  return { child, readyMs: performance.now() - t0 };
}

async function stopDriver(child: ChildProcess): Promise<void> {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

const stats = (xs: number[]) => ({ p50: percentile(xs, 50), p99: percentile(xs, 99) });
const f = (x: number) => x.toFixed(2);

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinpool-csi-scale-'));
  const socket = path.join(dir, 'csi.sock');
  try {
    execFileSync(process.execPath, [
      CLI,
      'pool',
      'create',
      path.join(dir, 'pool'),
      '--data-size',
      '16G',
      '--metadata-size',
      '1G',
    ]);
    let { child } = await startDriver(dir, socket);
    let ctl = controller(socket);
    const vol = (await ctl.call('CreateVolume', {
      name: 'origin',
      capacity_range: { required_bytes: 2 ** 30 },
      volume_capabilities: [{ mount: { fs_type: 'ext4' }, access_mode: { mode: 'SINGLE_NODE_WRITER' } }],
    })) as { volume: { volume_id: string } };
    const volumeId = vol.volume.volume_id;

    const create: number[] = [];
    const ids: string[] = [];
    const started = performance.now();
    for (let i = 0; i < SNAPSHOTS; i++) {
      const t0 = performance.now();
      const r = (await ctl.call('CreateSnapshot', { name: `snap-${i}`, source_volume_id: volumeId })) as {
        snapshot: { snapshot_id: string };
      };
      create.push(performance.now() - t0);
      ids.push(r.snapshot.snapshot_id);
      if (i % 10_000 === 9_999)
        process.stderr.write(`${i + 1} snapshots, last 1,000 p99 ${f(stats(create.slice(-1000)).p99)} ms\n`);
    }
    const createSeconds = (performance.now() - started) / 1000;

    // Idempotent retries look the name up through the label index.
    const retry: number[] = [];
    for (let i = 0; i < WINDOW; i++) {
      const t0 = performance.now();
      await ctl.call('CreateSnapshot', {
        name: `snap-${Math.floor((i * SNAPSHOTS) / WINDOW)}`,
        source_volume_id: volumeId,
      });
      retry.push(performance.now() - t0);
    }

    const list: number[] = [];
    let token = '';
    let listed = 0;
    do {
      const t0 = performance.now();
      const r = (await ctl.call('ListSnapshots', { max_entries: PAGE, starting_token: token })) as {
        entries: unknown[];
        next_token: string;
      };
      list.push(performance.now() - t0);
      listed += r.entries.length;
      token = r.next_token;
    } while (token);
    if (listed !== SNAPSHOTS) throw new Error(`ListSnapshots returned ${listed} of ${SNAPSHOTS} snapshots`);

    ctl.close();
    await stopDriver(child);
    const t0 = performance.now();
    const pool = await Pool.open(path.join(dir, 'pool'), { commitIntervalMs: 0 });
    const openMs = performance.now() - t0;
    const devices = pool.status().devices;
    await pool.close();
    const restarted = await startDriver(dir, socket);
    child = restarted.child;
    ctl = controller(socket);

    const del: number[] = [];
    for (const id of ids) {
      const t1 = performance.now();
      await ctl.call('DeleteSnapshot', { snapshot_id: id });
      del.push(performance.now() - t1);
    }
    ctl.close();
    await stopDriver(child);

    const first = stats(create.slice(0, WINDOW));
    const last = stats(create.slice(-WINDOW));
    const all = stats(create);
    const rows = [
      `| CreateSnapshot, first ${WINDOW} | ${f(first.p50)} | ${f(first.p99)} | |`,
      `| CreateSnapshot, last ${WINDOW} (pool at ${SNAPSHOTS.toLocaleString('en')} devices) | ${f(last.p50)} | ${f(last.p99)} | ${f(last.p50 / first.p50)}× p50, ${f(last.p99 / first.p99)}× p99 |`,
      `| CreateSnapshot, all ${SNAPSHOTS.toLocaleString('en')} | ${f(all.p50)} | ${f(all.p99)} | |`,
      `| CreateSnapshot retry of an existing name | ${f(stats(retry).p50)} | ${f(stats(retry).p99)} | |`,
      `| ListSnapshots, pages of ${PAGE} over ${SNAPSHOTS.toLocaleString('en')} | ${f(stats(list).p50)} | ${f(stats(list).p99)} | |`,
      `| DeleteSnapshot, first ${WINDOW} (pool full) | ${f(stats(del.slice(0, WINDOW)).p50)} | ${f(stats(del.slice(0, WINDOW)).p99)} | |`,
      `| DeleteSnapshot, last ${WINDOW} (pool nearly empty) | ${f(stats(del.slice(-WINDOW)).p50)} | ${f(stats(del.slice(-WINDOW)).p99)} | |`,
      `| DeleteSnapshot, all | ${f(stats(del).p50)} | ${f(stats(del).p99)} | |`,
    ];
    const section = [
      '## Device set at scale (CSI socket)',
      '',
      `\`bash bench/thin/scale.sh\` (${new Date().toISOString().slice(0, 10)}, ${machineLine()}): a driver process`,
      '(`serve --role all`) on a file-backed pool; one volume, then CreateSnapshot of it in a loop, one',
      'call at a time. The peer is the same driver at a small pool: the last 1,000 calls against the',
      'first 1,000 (target: p99 < 5 ms and within ±20 %).',
      '',
      '| operation | p50 ms | p99 ms | vs the first 1,000 |',
      '| --- | ---: | ---: | ---: |',
      ...rows,
      '',
      `${SNAPSHOTS.toLocaleString('en')} snapshots took ${createSeconds.toFixed(0)} s to create. Opening the pool at`,
      `${devices.toLocaleString('en')} devices (verifying every tree node, reconciling the catalogue): ${openMs.toFixed(0)} ms;`,
      `the driver was ready ${restarted.readyMs.toFixed(0)} ms after it was started.`,
      '',
    ].join('\n');
    process.stdout.write(section + '\n');
    if (writeDocs) updateBenchmarkSection(section);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
