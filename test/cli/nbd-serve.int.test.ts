// `thinpool nbd serve` seen by real NBD clients: the exports, their allocation map and the
// changed-block context must equal what the engine itself says.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Pool } from '../../src/thin/pool';
import { CLI } from '../helpers/cli';
import { makeTempDir } from '../helpers/tmp';
import { runTool } from '../helpers/tools';
import { seededRandom, testSeed } from '../helpers/random';
import { randomData, randomRange } from '../helpers/thin-model';

const BLOCK = 64 * 1024;
const SIZE = 512 * BLOCK;
const tmp = makeTempDir();
let server: ChildProcess | undefined;
afterAll(() => {
  server?.kill('SIGKILL');
  tmp.cleanup();
});

type Run = [offset: number, length: number, flags: number];

/** nbdinfo --map output as [offset, length, flags] runs, neighbours with equal flags merged. */
function parseMap(text: string): Run[] {
  const runs: Run[] = [];
  for (const line of text.trim().split('\n')) {
    const [offset, length, flags] = line.trim().split(/\s+/).map(Number);
    const last = runs[runs.length - 1];
    if (last && last[2] === flags && last[0] + last[1] === offset) last[1] += length;
    else runs.push([offset, length, flags]);
  }
  return runs;
}

/** Block ranges as byte runs over the whole device: `on` inside the ranges, `off` elsewhere. */
function toRuns(ranges: { begin: number; length: number }[], on: number, off: number): Run[] {
  const runs: Run[] = [];
  let cursor = 0;
  const push = (from: number, to: number, flags: number) => {
    if (to <= from) return;
    const last = runs[runs.length - 1];
    if (last && last[2] === flags && last[0] + last[1] === from) last[1] += to - from;
    else runs.push([from, to - from, flags]);
  };
  for (const r of ranges) {
    push(cursor, r.begin * BLOCK, off);
    push(r.begin * BLOCK, (r.begin + r.length) * BLOCK, on);
    cursor = (r.begin + r.length) * BLOCK;
  }
  push(cursor, SIZE, off);
  return runs;
}

it('serves exports whose allocation map and delta context match the engine', async () => {
  const rnd = seededRandom(testSeed());
  const dir = path.join(tmp.dir, 'pool');
  const pool = await Pool.create(dir, { dataSizeBytes: 2 ** 30 }, { commitIntervalMs: 0 });
  await pool.createThin(1, SIZE);
  for (let i = 0; i < 60; i++) {
    const { offset, length } = randomRange(rnd, SIZE);
    await pool.device(1).write(offset, randomData(length));
  }
  await pool.createSnap(2, 1);
  for (let i = 0; i < 30; i++) {
    const { offset, length } = randomRange(rnd, SIZE);
    await pool.device(1).write(offset, randomData(length));
  }
  await pool.createSnap(3, 1);
  const allocated = await pool.allocated(1);
  const allocatedS2 = (await pool.allocated(2)).reduce((n, r) => n + r.length * BLOCK, 0);
  const delta = await pool.delta(2, 3);
  await pool.close();
  expect(delta.length).toBeGreaterThan(0);

  server = spawn(
    process.execPath,
    [
      CLI,
      'nbd',
      'serve',
      dir,
      '--listen',
      '127.0.0.1:0',
      '--export',
      'vol=1',
      '--export',
      's2=2:ro',
      '--export',
      's3=3:ro',
      '--metrics-listen',
      '127.0.0.1:0',
    ],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const [address, metricsAddress] = await new Promise<[string, string]>((resolve, reject) => {
    let out = '';
    server!.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening (\S+)\nmetrics (\S+)\n/.exec(out);
      if (m) resolve([m[1], m[2]]);
    });
    server!.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  const uri = (name: string) => `nbd://${address}/${name}`;

  const list = JSON.parse((await runTool('nbdinfo', ['--json', '--list', `nbd://${address}`])).stdout);
  const exports = Object.fromEntries(
    list.exports.map((e: { 'export-name': string }) => [e['export-name'], e]),
  );
  expect(Object.keys(exports).sort()).toEqual(['s2', 's3', 'vol']);
  expect(exports.vol['export-size']).toBe(SIZE);
  expect(exports.s3['is_read_only']).toBe(true);
  expect(exports.vol['is_read_only']).toBe(false);
  expect(exports.s3.contexts).toEqual(expect.arrayContaining(['base:allocation', 'thinpool:delta:2']));

  const map = await runTool('nbdinfo', ['--map', uri('vol')]);
  expect(map.code).toBe(0);
  // base:allocation: 0 = data, 3 = hole|zero.
  expect(parseMap(map.stdout)).toEqual(toRuns(allocated, 0, 3));

  const deltaMap = await runTool('nbdinfo', ['--map=thinpool:delta:2', uri('s3')]);
  expect(deltaMap.code).toBe(0);
  expect(parseMap(deltaMap.stdout)).toEqual(toRuns(delta, 1, 0));

  const write = await runTool('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', uri('s3')]);
  expect(write.stdout + write.stderr).toMatch(/Operation not permitted|read-only|Permission denied/i);

  // Server-side counters: the whole export s2 read once by nbdcopy shows up in /metrics.
  const copy = await runTool('nbdcopy', [uri('s2'), path.join(tmp.dir, 's2.img')]);
  expect(copy.code).toBe(0);
  const metrics = await (await fetch(`http://${metricsAddress}/metrics`)).text();
  const readBytes = Number(
    /thinpool_nbd_bytes_total\{export="s2",op="read"\} (\d+)/.exec(metrics)?.[1] ?? -1,
  );
  // nbdcopy reads only the allocated parts (it skips holes from base:allocation).
  expect(readBytes).toBeGreaterThanOrEqual(allocatedS2);
  expect(readBytes).toBeLessThanOrEqual(SIZE);
  expect(metrics).toMatch(/thinpool_pool_devices\{pool="[^"]+"\} 3/);
  expect(metrics).toMatch(
    /thinpool_nbd_operations_total\{export="vol",op="block_status",result="ok"\} [1-9]/,
  );
  expect(metrics).toMatch(/thinpool_nbd_operations_total\{export="s2",op="read",result="ok"\} [1-9]/);
  // Every read served was also timed.
  const readsTimed = Number(
    /thinpool_nbd_operation_seconds_count\{op="read"\} (\d+)/.exec(metrics)?.[1] ?? -1,
  );
  const readsCounted = [
    ...metrics.matchAll(/thinpool_nbd_operations_total\{export="[^"]+",op="read",result="\w+"\} (\d+)/g),
  ].reduce((n, m) => n + Number(m[1]), 0);
  expect(readsTimed).toBeGreaterThan(0);
  expect(readsTimed).toBe(readsCounted);
  // The read-only export refused qemu-io's write before it reached the device.
  expect(metrics).not.toMatch(/export="s3",op="write"/);
  expect((await fetch(`http://${metricsAddress}/healthz`)).status).toBe(200);

  // A client's write and flush reach the pool: the flush syncs the data file.
  const syncsOf = (text: string) =>
    Number(/thinpool_pool_data_syncs_total\{pool="[^"]+"\} (\d+)/.exec(text)?.[1] ?? -1);
  const syncsBefore = syncsOf(metrics);
  expect(syncsBefore).toBeGreaterThanOrEqual(0);
  const flushed = await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 4k', '-c', 'flush', uri('vol')]);
  expect(flushed.code).toBe(0);
  const after = await (await fetch(`http://${metricsAddress}/metrics`)).text();
  expect(syncsOf(after)).toBeGreaterThan(syncsBefore);
  expect(after).toMatch(/thinpool_pool_commits_total\{pool="[^"]+"\} \d+/);

  // Writes through real clients: the first copy provisions blocks, the second overwrites them
  // in place (large writes arrive in pieces); both must read back exactly.
  for (const round of [1, 2]) {
    const image = path.join(tmp.dir, `in-${round}.img`);
    fs.writeFileSync(image, randomBytes(SIZE));
    expect((await runTool('nbdcopy', [image, uri('vol')])).code).toBe(0);
    const back = path.join(tmp.dir, `out-${round}.img`);
    expect((await runTool('nbdcopy', [uri('vol'), back])).code).toBe(0);
    expect(fs.readFileSync(back).equals(fs.readFileSync(image))).toBe(true);
  }

  server.kill('SIGTERM');
  expect(await new Promise((r) => server!.once('exit', (code) => r(code)))).toBe(0);
  server = undefined;
});
