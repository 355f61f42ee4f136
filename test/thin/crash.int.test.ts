// Crash consistency: a child process does random writes, trims, zeroes, flushes and snapshots
// and is SIGKILLed at a random moment. After each kill the pool must open, pass both thin_check
// versions and our checker (no leaked or missing reference), and every byte of every write
// acknowledged before the kill must read back exactly, flushed or not: the data is in the page
// cache and the mapping journal carries the uncommitted mappings (only a reboot loses them).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Pool } from '../../src/thin/pool';
import { checkMetadata } from '../../src/thin/check';
import { makeTempDir } from '../helpers/tmp';
import { thinCheckBoth } from '../helpers/thin-oracle';
import { seededRandom, testSeed } from '../helpers/random';
import { note } from '../helpers/notes';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { fillPattern } = require('../helpers/crash-pattern') as {
  fillPattern(buf: Buffer, tag: number): Buffer;
};

const TRIALS = Number(process.env.CRASH_TRIALS ?? 50);
const DEVICE_BYTES = 8 * 2 ** 20;
const WORKER = path.join(__dirname, '../helpers/crash-worker.js');

type Entry =
  | { op: 'ready' | 'durable' | 'acked' }
  | { op: 'write'; id: number; offset: number; length: number; tag: number }
  | { op: 'zero'; id: number; offset: number; length: number }
  | { op: 'snap'; id: number; origin: number }
  | { op: 'error'; message: string };

function runWorker(dir: string, seed: number, journal: string, killAfterMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WORKER, dir, String(seed), journal], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    let timer: NodeJS.Timeout | undefined;
    const watch = setInterval(() => {
      if (!timer && fs.existsSync(journal) && fs.readFileSync(journal, 'utf8').includes('"ready"')) {
        timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
      }
    }, 10);
    child.on('exit', (code, signal) => {
      clearInterval(watch);
      if (timer) clearTimeout(timer);
      if (signal === 'SIGKILL') resolve(stderr);
      else reject(new Error(`worker exited by itself (code ${code}): ${stderr}`));
    });
  });
}

describe('crash consistency under SIGKILL', () => {
  const seed = testSeed();
  const tmp = makeTempDir();
  afterAll(() => tmp.cleanup());

  it(`keeps every acknowledged write over ${TRIALS} kills (seed ${seed})`, async () => {
    const rnd = seededRandom(seed);
    const dir = path.join(tmp.dir, 'pool');
    let pool = await Pool.create(
      dir,
      { dataSizeBytes: 2 ** 30, blockSizeBytes: 64 * 1024 },
      { commitIntervalMs: 0 },
    );
    await pool.createThin(0, DEVICE_BYTES);
    await pool.createThin(1, DEVICE_BYTES);
    await pool.close();
    // What each device held at the last verified point.
    const baseline = new Map<number, Buffer>([
      [0, Buffer.alloc(DEVICE_BYTES)],
      [1, Buffer.alloc(DEVICE_BYTES)],
    ]);
    let writesChecked = 0;
    let snapshots = 0;

    for (let trial = 0; trial < TRIALS; trial++) {
      const journal = path.join(tmp.dir, `journal-${trial}`);
      await runWorker(dir, seed + trial, journal, 100 + rnd.int(700));
      const entries = fs
        .readFileSync(journal, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Entry);
      const failure = entries.find((e) => e.op === 'error');
      expect(failure).toBeUndefined();

      // Replay up to the last acknowledgement; ranges touched after it are uncertain.
      const lastAcked = entries.reduce((at, e, i) => (e.op === 'durable' || e.op === 'acked' ? i : at), -1);
      const expected = new Map([...baseline].map(([id, b]) => [id, Buffer.from(b)]));
      const uncertain = new Map<number, [number, number][]>();
      entries.forEach((e, i) => {
        if (e.op === 'snap') {
          if (i < lastAcked) {
            expected.set(e.id, Buffer.from(expected.get(e.origin)!));
            snapshots++;
          } else uncertain.set(e.id, [[0, DEVICE_BYTES]]);
          return;
        }
        if (e.op !== 'write' && e.op !== 'zero') return;
        if (i > lastAcked) {
          uncertain.set(e.id, [...(uncertain.get(e.id) ?? []), [e.offset, e.offset + e.length]]);
          return;
        }
        const target = expected.get(e.id)!;
        if (e.op === 'write') {
          fillPattern(Buffer.alloc(e.length), e.tag).copy(target, e.offset);
          writesChecked++;
        } else target.fill(0, e.offset, e.offset + e.length);
      });

      const metadata = path.join(dir, 'metadata');
      pool = await Pool.open(dir, { commitIntervalMs: 0 });
      const ids = pool.listDevices().map((d) => d.id);
      for (const id of expected.keys()) expect(ids).toContain(id);
      const next = new Map<number, Buffer>();
      for (const id of ids) {
        const got = await pool.device(id).read(0, DEVICE_BYTES);
        next.set(id, got);
        const want = expected.get(id);
        if (!want) continue; // a snapshot whose creation was cut short: either outcome is fine
        // Blank out what was still in flight, then everything else must match exactly.
        const a = Buffer.from(got);
        const b = Buffer.from(want);
        for (const [from, to] of uncertain.get(id) ?? []) {
          a.fill(0, from, to);
          b.fill(0, from, to);
        }
        if (!a.equals(b)) {
          const at = a.findIndex((x, k) => x !== b[k]);
          throw new Error(`trial ${trial}: device ${id} lost acknowledged data at byte ${at}`);
        }
      }
      await pool.close();
      expect({ trial, errors: checkMetadata(metadata).errors }).toEqual({ trial, errors: [] });
      for (const r of await thinCheckBoth(metadata))
        expect({ trial, ...r }).toMatchObject({ trial, code: 0 });
      baseline.clear();
      for (const [id, b] of next) baseline.set(id, b);
    }
    expect(writesChecked).toBeGreaterThan(TRIALS);
    note(JSON.stringify({ seed, trials: TRIALS, writesChecked, snapshots }));
  }, 900_000);
});
