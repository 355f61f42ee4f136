// NBD fuzz campaign: ≥ 10^6 generated hostile frames (handshake and transmission, simple,
// structured and extended; test/nbd/fuzz-frames.ts) from many concurrent connections against a
// real `thinpool nbd serve` process on a real thin pool, while two well-behaved clients write,
// read back, zero and flush their own regions and must never see an error or a wrong byte.
// The server's RSS is sampled throughout. Bounded in time; exit 1 on any failure.
// Run: bash test/stress/nbd-fuzz.sh [--frames N] [--seed S] [--max-minutes M] [--workers W] [--keep]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import yargs from 'yargs';
import { seededRandom } from '../helpers/random';
import { FuzzStats, type GoodClientResult, goodClient, runHostile } from '../nbd/fuzz-clients';
import { type FuzzExport, type HostileScript, hostileScript, sweepFrames } from '../nbd/fuzz-frames';
import { RawClient } from '../nbd/raw-client';
import { checkPool, createPool, DEVICES, Sampler, ServerProcess } from './nbd-fuzz/server';

const MiB = 1024 * 1024;
const GOOD_REGION_BYTES = 4 * MiB;
const GOOD_START = DEVICES.good.sizeBytes - 2 * GOOD_REGION_BYTES;
/**
 * Leak detector: the server's RSS may not grow by more than this between the second and the
 * last quarter of the run. Its caches (buffer pool ≤ 64 MiB, pool metadata of ≤ 128 MiB of
 * devices) fill in the first quarter, the warm-up; a leak of 64 bytes per frame would exceed
 * this over 10^6 frames.
 */
const MAX_RSS_GROWTH_BYTES = 48 * MiB;
/**
 * Hard ceiling on the server's RSS at any moment. Per connection the server stops reading at
 * 64 MiB of pending replies (plus one 32 MiB READ); only one never-reading flood runs at a time,
 * other connections hold well under 1 MiB each; plus Node, the pool and the 64 MiB buffer pool.
 */
const MAX_RSS_BYTES = 640 * MiB;
const RSS_SAMPLE_MS = 250;

function parseArgs(argv: string[]) {
  return yargs(argv)
    .strict()
    .option('frames', { type: 'number', default: 1_000_000 })
    .option('seed', { type: 'number', default: Date.now() % 1e9 })
    .option('max-minutes', { type: 'number', default: 30 })
    .option('workers', { type: 'number', default: 16, coerce: (n: number) => Math.max(1, Math.floor(n)) })
    .option('log-level', { type: 'string', default: 'warn' })
    .option('keep', { type: 'boolean', default: false })
    .check((a) => {
      for (const k of ['frames', 'seed', 'max-minutes', 'workers'] as const)
        if (!Number.isFinite(a[k]) || a[k] < 0) throw new Error(`--${k} needs a number ≥ 0`);
      return true;
    })
    .parseSync();
}

const fuzzExports: FuzzExport[] = [
  {
    name: 'good',
    sizeBytes: DEVICES.good.sizeBytes,
    readOnly: false,
    contexts: [],
    protect: { start: GOOD_START, end: DEVICES.good.sizeBytes },
  },
  { name: 'fuzz', sizeBytes: DEVICES.fuzz.sizeBytes, readOnly: false, contexts: [] },
  {
    name: 'snap',
    sizeBytes: DEVICES.snap.sizeBytes,
    readOnly: true,
    contexts: [`thinpool:delta:${DEVICES.good.id}`, `thinpool:delta:${DEVICES.fuzz.id}`],
  },
];

/** One never-reading flood at a time, so the memory ceiling above stays a sum of known terms. */
class Gate {
  private busy = false;
  private waiting: Array<() => void> = [];
  async run<T>(work: () => Promise<T>): Promise<T> {
    while (this.busy) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.busy = true;
    try {
      return await work();
    } finally {
      this.busy = false;
      this.waiting.shift()?.();
    }
  }
}

const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;

async function main(): Promise<number> {
  const options = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const deadline = started + options.maxMinutes * 60_000;
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinpool-nbd-fuzz-'));
  const poolDir = path.join(workDir, 'pool');
  const logFile = path.join(workDir, 'server.log');
  const failures: string[] = [];
  // A throw inside a client's socket handler (e.g. a reply it cannot parse) is a failure, not a crash.
  process.on('uncaughtException', (error) => failures.push(`uncaught: ${error.stack ?? error}`));

  process.stdout.write(`nbd-fuzz seed=${options.seed} frames=${options.frames} workers=${options.workers}\n`);
  await createPool(poolDir);
  const server = new ServerProcess(poolDir, logFile, options.logLevel);
  await server.start();
  let stopping = false;
  void server.exited.then(() => {
    if (!stopping)
      failures.push(`server exited during the run (code ${server.exitCode}, ${server.exitSignal})`);
  });
  const rss = new Sampler();
  rss.start(() => server.rssBytes(), RSS_SAMPLE_MS);
  const target = { port: server.port };

  let goodStopping = false;
  const good = (['simple', 'extended'] as const).map((mode, i) =>
    goodClient({
      target,
      exportName: 'good',
      region: { start: GOOD_START + i * GOOD_REGION_BYTES, end: GOOD_START + (i + 1) * GOOD_REGION_BYTES },
      mode,
      seed: options.seed + i,
      stop: () => goodStopping || failures.length > 0,
      opTimeoutMs: 15_000,
    }),
  );

  const stats = new FuzzStats();
  let peakConnections = 0;
  const connectionSampler = setInterval(() => {
    server.connections().then(
      (n) => (peakConnections = Math.max(peakConnections, n)),
      () => undefined,
    );
  }, 2000);

  // A close at every byte of a short conversation, in each reply mode and both ways of leaving.
  for (const mode of ['simple', 'structured', 'extended'] as const) {
    const frames = sweepFrames(fuzzExports[1], mode);
    const total = frames.reduce((n, f) => n + f.bytes.length, 0);
    for (let cut = 0; cut <= total && failures.length === 0; cut++) {
      for (const close of ['destroy', 'end'] as const) {
        const script: HostileScript = {
          scenario: 'sweep',
          frames,
          cutAt: cut,
          readReplies: true,
          trickle: false,
          lingerMs: 0,
          close,
        };
        await runHostile(target, script, stats);
      }
    }
  }

  const gate = new Gate();
  let lastReport = Date.now();
  await Promise.all(
    Array.from({ length: options.workers }, async (_, worker) => {
      const rand = seededRandom(options.seed * 131 + worker);
      while (stats.frames < options.frames && Date.now() < deadline && failures.length === 0) {
        const script = hostileScript(rand, fuzzExports);
        if (script.scenario === 'flood-never-reading')
          await gate.run(() => runHostile(target, script, stats));
        else await runHostile(target, script, stats);
        if (Date.now() - lastReport > 10_000) {
          lastReport = Date.now();
          const seconds = ((Date.now() - started) / 1000).toFixed(0);
          process.stdout.write(
            `  ${seconds} s: ${stats.frames} frames, ${stats.connections} connections, rss ${mib(rss.samples.at(-1) ?? 0)}\n`,
          );
        }
      }
    }),
  );
  const fuzzEnded = Date.now();
  goodStopping = true;
  const results: GoodClientResult[] = await Promise.all(good);
  clearInterval(connectionSampler);
  rss.stop();

  if (stats.frames < options.frames)
    failures.push(`only ${stats.frames} of ${options.frames} frames in the time allowed`);
  results.forEach((r, i) => r.errors.forEach((e) => failures.push(`good client ${i}: ${e}`)));
  if (stats.connectFailures > 0) failures.push(`${stats.connectFailures} connections refused`);
  const { first, last, growth } = rss.growthAfterWarmup;
  if (growth > MAX_RSS_GROWTH_BYTES)
    failures.push(`RSS grew ${mib(growth)} (bound ${mib(MAX_RSS_GROWTH_BYTES)})`);
  if (rss.peak > MAX_RSS_BYTES) failures.push(`RSS peaked at ${mib(rss.peak)} (bound ${mib(MAX_RSS_BYTES)})`);

  // Still serving a new client, and every hostile connection is gone.
  if (server.alive) {
    try {
      const fresh = await RawClient.open(target);
      await fresh.go('fuzz', { extended: true });
      const data = Buffer.alloc(65536, 0x3c);
      const wrote = await fresh.writeData(0, data);
      const read = await fresh.read(0, data.length);
      if (wrote.error || read.error || !read.data?.equals(data))
        failures.push('a fresh client was not served');
      fresh.disconnect();
      await fresh.closed;
    } catch (error) {
      failures.push(`fresh client: ${(error as Error).message}`);
    }
    let open = NaN;
    for (let i = 0; i < 100; i++) {
      open = await server.connections().catch(() => NaN);
      if (open === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    if (open !== 0) failures.push(`${open} connections still open after the run`);
  }
  stopping = true;
  if (!(await server.stop(20_000))) failures.push(`server did not shut down cleanly (${server.exitCode})`);
  const check = await checkPool(poolDir);
  if (!check.ok) failures.push(`pool check: ${check.text}`);
  const serverLog = fs.readFileSync(logFile, 'utf8').split('\n').filter(Boolean);
  const serverErrors = serverLog.filter((line) => line.includes('"level":"error"'));
  serverErrors.slice(0, 5).forEach((line) => failures.push(`server logged: ${line}`));

  const seconds = (Date.now() - started) / 1000;
  const out: string[] = [];
  out.push(`date          ${new Date(started).toISOString()}`);
  out.push(`seed          ${options.seed}`);
  out.push(`frames        ${stats.frames} (${(stats.frames / ((fuzzEnded - started) / 1000)).toFixed(0)}/s)`);
  out.push(`connections   ${stats.connections} hostile, peak ${peakConnections} open at once (sampled)`);
  out.push(`scenarios     ${[...stats.byScenario].map(([k, n]) => `${k} ${n}`).join(', ')}`);
  out.push(`reply bytes   ${stats.replyBytes} read by hostile clients`);
  out.push('frames by kind:');
  for (const [kind, n] of stats.groups()) out.push(`  ${kind.padEnd(34)} ${n}`);
  results.forEach((r, i) => {
    const ops = [...r.ops].map(([k, n]) => `${k} ${n}`).join(', ');
    out.push(
      `good client ${i} (${i === 0 ? 'simple' : 'extended'}): ${ops}; ${mib(r.bytesVerified)} verified; ` +
        `max latency ${r.maxLatencyMs} ms; errors ${r.errors.length}`,
    );
  });
  out.push(
    `server RSS    peak ${mib(rss.peak)} (bound ${mib(MAX_RSS_BYTES)}); second quarter ${mib(first)}, ` +
      `last quarter ${mib(last)}, growth ${mib(growth)} (bound ${mib(MAX_RSS_GROWTH_BYTES)}); ${rss.samples.length} samples`,
  );
  out.push(`server log    ${serverLog.length} lines, ${serverErrors.length} at error level`);
  out.push(`pool check    ${check.text.split('\n').pop()}`);
  out.push(`duration      ${seconds.toFixed(1)} s`);
  process.stdout.write(out.join('\n') + '\n');
  if (failures.length > 0) {
    process.stdout.write(`FAILED (${failures.length}); work directory kept: ${workDir}\n`);
    for (const f of failures.slice(0, 30)) process.stdout.write(`  ${f}\n`);
    return 1;
  }
  if (!options.keep) fs.rmSync(workDir, { recursive: true, force: true });
  else process.stdout.write(`work directory: ${workDir}\n`);
  process.stdout.write('PASSED\n');
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`nbd-fuzz: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  },
);
