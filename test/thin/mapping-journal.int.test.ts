// A killed process keeps its acknowledged writes: the data is in the page cache and the mapping
// journal carries the mappings it had not committed. A journal from an earlier boot, or one
// whose changes a commit already holds, must change nothing.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { crc32c } from '../../src/pdata/crc32c';
import { checkMetadata } from '../../src/thin/check';
import { Pool } from '../../src/thin/pool';
import { poolPaths } from '../../src/thin/pool-files';
import { CLI } from '../helpers/cli';
import { makeTempDir } from '../helpers/tmp';
import { thinCheckBoth } from '../helpers/thin-oracle';
import { runTool } from '../helpers/tools';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { fillPattern } = require('../helpers/crash-pattern') as {
  fillPattern(buf: Buffer, tag: number): Buffer;
};

const MiB = 2 ** 20;
const SIZE = 8 * MiB;
const WORKER = path.join(__dirname, '../helpers/journal-worker.js');
const tmp = makeTempDir();
const children: ChildProcess[] = [];
afterAll(() => {
  for (const child of children) child.kill('SIGKILL');
  tmp.cleanup();
});

let poolNo = 0;
/** A pool with device 1, whose block at 4 MiB holds committed data (pattern 3). */
async function makePool(): Promise<string> {
  const dir = path.join(tmp.dir, `pool-${poolNo++}`);
  const pool = await Pool.create(dir, { dataSizeBytes: 256 * MiB }, { commitIntervalMs: 0 });
  await pool.createThin(1, SIZE);
  await pool.device(1).write(4 * MiB, fillPattern(Buffer.alloc(64 * 1024), 3));
  await pool.close();
  return dir;
}

/** What the worker leaves when everything it acknowledged survives. */
function afterWorker(): Buffer {
  const want = Buffer.alloc(SIZE);
  fillPattern(Buffer.alloc(192 * 1024), 1).copy(want, 0);
  fillPattern(Buffer.alloc(4096), 2).copy(want, MiB + 4096);
  return want;
}

/** Only what was committed before the worker ran. */
function committedOnly(): Buffer {
  const want = Buffer.alloc(SIZE);
  fillPattern(Buffer.alloc(64 * 1024), 3).copy(want, 4 * MiB);
  return want;
}

function runWorker(dir: string, mode: 'no-flush' | 'flush', env: NodeJS.ProcessEnv = {}) {
  return new Promise<{ stdout: string; signal: NodeJS.Signals | null; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [WORKER, dir, mode], { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (_code, signal) => resolve({ stdout, signal, stderr }));
  });
}

async function expectContent(dir: string, want: Buffer): Promise<void> {
  const pool = await Pool.open(dir, { commitIntervalMs: 0 });
  try {
    const got = await pool.device(1).read(0, SIZE);
    const at = got.findIndex((x, i) => x !== want[i]);
    expect({ firstDifference: at }).toEqual({ firstDifference: -1 });
  } finally {
    await pool.close();
  }
}

async function expectCleanMetadata(dir: string): Promise<void> {
  const metadata = poolPaths(dir).metadata;
  expect(checkMetadata(metadata).errors).toEqual([]);
  for (const r of await thinCheckBoth(metadata)) expect(r).toMatchObject({ code: 0 });
}

it('replays writes a SIGKILLed process acknowledged but never flushed', async () => {
  const dir = await makePool();
  const run = await runWorker(dir, 'no-flush');
  expect(run).toMatchObject({ stdout: 'acked\n', signal: 'SIGKILL' });
  await expectContent(dir, afterWorker());
  await expectCleanMetadata(dir);
  // Replayed once and committed: a second open finds the same, with the same references.
  await expectContent(dir, afterWorker());
  const pool = await Pool.open(dir, { commitIntervalMs: 0 });
  expect(pool.deviceInfo(1).details.mappedBlocks).toBe(4); // three at 0, one at 1 MiB
  await pool.close();
});

it('ignores a journal written before a reboot', async () => {
  const dir = await makePool();
  expect(await runWorker(dir, 'no-flush')).toMatchObject({ stdout: 'acked\n', signal: 'SIGKILL' });
  // Another boot id in a header that is otherwise valid.
  const file = poolPaths(dir).journal;
  const journal = fs.readFileSync(file);
  journal[8] ^= 0xff;
  journal.writeUInt32LE(crc32c(journal.subarray(0, 60)), 60);
  fs.writeFileSync(file, journal);
  await expectContent(dir, committedOnly());
  await expectCleanMetadata(dir);
});

it('does not replay changes a commit already holds (killed before the journal was reset)', async () => {
  const dir = await makePool();
  const run = await runWorker(dir, 'flush', { THINPOOL_FAULT_POINT: 'commit:after-superblock' });
  expect(run).toMatchObject({ stdout: '', signal: 'SIGKILL' });
  await expectContent(dir, afterWorker());
  await expectCleanMetadata(dir);
});

it('a server killed with SIGKILL loses no write its NBD client saw acknowledged', async () => {
  const dir = await makePool();
  const serve = () => {
    const child = spawn(
      process.execPath,
      [CLI, 'nbd', 'serve', dir, '--listen', '127.0.0.1:0', '--export', 'vol=1', '--commit-interval', '0'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    children.push(child);
    let out = '';
    const address = new Promise<string>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /listening (\S+)\n/.exec(out);
        if (m) resolve(m[1]);
      });
      child.once('exit', (code) => reject(new Error(`server exited with ${code}: ${out}`)));
    });
    return { child, address, output: () => out };
  };
  const first = serve();
  const uri = `nbd://${await first.address}/vol`;
  // Acknowledged, never flushed: new blocks, a partial block and a discard of committed data.
  // qemu-io stays connected while the server dies (it flushes when it closes the image).
  // (stdbuf: its replies come line by line, not when it exits.)
  const client = spawn('stdbuf', ['-oL', 'qemu-io', '-f', 'raw', uri], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(client);
  let said = '';
  client.stdout.on('data', (d: Buffer) => (said += d.toString()));
  const commands = ['write -P 0x5a 0 192k', 'write -P 0xa5 1052672 4k', 'discard 4m 64k'];
  for (const [i, command] of commands.entries()) {
    client.stdin.write(`${command}\n`);
    // Each finished command prints one line with its rate.
    const finished = () => (said.match(/ops\/sec/g) ?? []).length > i;
    for (const deadline = Date.now() + 20_000; !finished();) {
      if (Date.now() > deadline) throw new Error(`qemu-io did not finish "${command}": ${said}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  first.child.kill('SIGKILL');
  await new Promise((r) => first.child.once('exit', r));
  client.stdin.end();
  await new Promise((r) => client.once('exit', r));

  const second = serve();
  const again = `nbd://${await second.address}/vol`;
  const read = await runTool('qemu-io', [
    '-f', 'raw', '-r',
    '-c', 'read -P 0x5a 0 192k',
    '-c', 'read -P 0xa5 1052672 4k',
    '-c', 'read -P 0 1048576 4k',
    '-c', 'read -P 0 4m 64k',
    again,
  ]); // prettier-ignore
  expect(read.stdout).not.toMatch(/Pattern verification failed/);
  expect(read.code).toBe(0);
  second.child.kill('SIGTERM');
  expect(await new Promise((r) => second.child.once('exit', r))).toBe(0);
  await expectCleanMetadata(dir);
}, 60_000);

it('keeps serving when the journal cannot be written (journaling stops, nothing crashes)', async () => {
  const dir = await makePool();
  // Every write to /dev/full fails with ENOSPC; reads give zeros (no valid header).
  fs.rmSync(poolPaths(dir).journal);
  fs.symlinkSync('/dev/full', poolPaths(dir).journal);
  const pool = await Pool.open(dir, { commitIntervalMs: 0 });
  try {
    const data = fillPattern(Buffer.alloc(192 * 1024), 4);
    await pool.device(1).write(0, data);
    await pool.flush();
    expect((await pool.device(1).read(0, data.length)).equals(data)).toBe(true);
  } finally {
    await pool.close();
  }
  await expectContent(
    dir,
    (() => {
      const want = committedOnly();
      fillPattern(Buffer.alloc(192 * 1024), 4).copy(want, 0);
      return want;
    })(),
  );
  await expectCleanMetadata(dir);
});
