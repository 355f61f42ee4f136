// SIGKILL campaign: one long life of one pool under `thinpool serve --role all`, killed again and
// again under mixed NBD and CSI load. After each kill: the metadata as left (our checker, both
// thin_check versions); then either the pool reopened here (devices, names, contents, catalogue,
// metadata again) or, one time in three, the restarted server's own word (lists and NBD reads).
// Run: bash test/stress/run kill [--kills N] [--max-minutes M] [--seed S] [--keep]
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { log } from '../../src/log';
import { seededRandom } from '../helpers/random';
import { CsiCalls } from './kill/csi';
import { Load, drawKillPlan } from './kill/load';
import { Model } from './kill/model';
import { DriverProcess } from './kill/server';
import { Stats, median } from './kill/stats';
import { checkMetadataFile, reopenAndVerify } from './kill/verify';

export interface CampaignOptions {
  kills: number;
  maxMinutes: number;
  seed: number;
  /** Keep the work directory (always kept after a failure). */
  keep?: boolean;
  progress?: (line: string) => void;
}

export interface CampaignResult {
  ok: boolean;
  seed: number;
  kills: number;
  durationMs: number;
  stats: Stats;
  failure?: string;
  failedAtKill?: number;
  workDir: string;
  serverLog?: string;
}

const POOL_NAME = 'default';
/** Share of kills checked by the restarted server rather than a reopen in this process. */
const SERVER_CHECK_SHARE = 1 / 3;

export async function runCampaign(options: CampaignOptions): Promise<CampaignResult> {
  const started = Date.now();
  const deadline = started + options.maxMinutes * 60_000;
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinpool-kill-'));
  const paths = {
    workDir,
    poolDir: path.join(workDir, 'pool'),
    socket: path.join(workDir, 'csi.sock'),
    stateDir: path.join(workDir, 'node'),
  };
  const stats = new Stats();
  const model = new Model('k');
  const goneNames = new Set<string>();
  const counters = { acks: 0, tags: 0 };
  const server = new DriverProcess(paths);
  // The in-process reopen logs what it replays and reconciles; the checks report what matters.
  const wasSilent = log.silent;
  log.silent = true;
  let failure: string | undefined;
  let failedAtKill: number | undefined;
  let checkedByServerNext = false;
  let verifiedUpTo = 0;

  try {
    for (let k = 0; k < options.kills && Date.now() < deadline && !failure; k++) {
      const rnd = seededRandom((options.seed * 7919 + k) >>> 0);
      const t0 = Date.now();
      server.start();
      const csi = new CsiCalls(paths.socket);
      const load = new Load(model, csi, rnd, stats, counters, () => void server.kill());
      try {
        await csi.waitReady(30_000, () => server.alive);
        stats.restartMs.push(Date.now() - t0);
        await load.retryCutShort(checkedByServerNext);
        await load.checkLists();
        await load.connectAll();
        if (checkedByServerNext) {
          await load.verifyOverNbd(verifiedUpTo);
          verifiedUpTo = counters.acks;
          stats.verifiedByServer++;
        }
        model.prune(goneNames);
        const t1 = Date.now();
        await load.run(drawKillPlan(rnd));
        stats.loadMs.push(Date.now() - t1);
      } catch (e) {
        load.failure ??= `campaign error: ${(e as Error).stack}`;
      }
      load.triggerKill('failure');
      await server.exited;
      await load.collect();
      csi.close();
      if (load.failure) {
        failure = load.failure;
        failedAtKill = k;
        break;
      }
      stats.kills++;

      // To replay a failure offline: the pool exactly as each kill left it.
      if (process.env.KILL_CAMPAIGN_SNAPSHOTS)
        execFileSync('cp', ['-a', '--sparse=always', paths.poolDir, path.join(workDir, `after-kill-${k}`)]);
      const t2 = Date.now();
      const found = await checkMetadataFile(paths.poolDir, 'as the kill left it', stats);
      const last = k === options.kills - 1 || Date.now() >= deadline;
      checkedByServerNext = !last && rnd.next() < SERVER_CHECK_SHARE;
      if (!checkedByServerNext) {
        found.push(
          ...(await reopenAndVerify(paths.poolDir, POOL_NAME, model, goneNames, stats, verifiedUpTo)),
        );
        verifiedUpTo = counters.acks;
      }
      stats.verifyMs.push(Date.now() - t2);
      if (found.length) {
        failure = found.join('\n');
        failedAtKill = k;
      }
      if ((k + 1) % 25 === 0)
        options.progress?.(
          `${k + 1} kills, ${Math.round((Date.now() - started) / 1000)} s, ${stats.writesAcked} writes`,
        );
    }
  } finally {
    await server.kill();
    log.silent = wasSilent;
  }
  const ok = !failure;
  if (ok && !options.keep) fs.rmSync(workDir, { recursive: true, force: true });
  return {
    ok,
    seed: options.seed,
    kills: stats.kills,
    durationMs: Date.now() - started,
    stats,
    failure,
    failedAtKill,
    workDir,
    serverLog: ok ? undefined : server.log,
  };
}

/** The figures a run ends with. */
export function summary(r: CampaignResult): Record<string, unknown> {
  const s = r.stats;
  return {
    result: r.ok ? 'ok' : 'FAILED',
    seed: r.seed,
    kills: r.kills,
    durationSeconds: Math.round(r.durationMs / 1000),
    killModes: s.killModes,
    killsDuringCsiCall: s.killsDuringCsi,
    killsDuringFlush: s.killsDuringFlush,
    nbdRequestsCutShort: s.nbdRequestsCutShort,
    checks: {
      reopenedInProcess: s.reopensInProcess,
      checkedThroughServer: s.verifiedByServer,
      thinCheckRuns: s.thinCheckRuns,
      ourCheckerRuns: s.checkerRuns,
      catalogueFieldAbsent: s.catalogueFieldAbsent,
    },
    io: {
      writesAcked: s.writesAcked,
      fuaWrites: s.fuaWrites,
      trimsAcked: s.trimsAcked,
      zeroesAcked: s.zeroesAcked,
      flushesAcked: s.flushesAcked,
      bytesWritten: s.bytesWritten,
      readsVerifiedWhileServing: s.onlineReads,
      changesVerifiedAfterKills: s.changesVerified,
      ofWhichUnflushed: s.unflushedChangesVerified,
      bytesVerified: s.bytesVerified,
    },
    csiCallsOk: s.csiOk,
    cutShortCreates: s.cutShortCreates,
    cutShortDeletes: s.cutShortDeletes,
    medianMs: { restart: median(s.restartMs), load: median(s.loadMs), verify: median(s.verifyMs) },
    ...(r.ok ? {} : { failedAtKill: r.failedAtKill, failure: r.failure, workDir: r.workDir }),
  };
}

function parseArgs(argv: string[]): CampaignOptions {
  const options: CampaignOptions = {
    kills: 500,
    maxMinutes: 40,
    seed: Number(process.env.TEST_SEED ?? Math.floor(Math.random() * 2 ** 31)),
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === '--kills') options.kills = Number(value);
    else if (flag === '--max-minutes') options.maxMinutes = Number(value);
    else if (flag === '--seed') options.seed = Number(value);
    else if (flag === '--keep') {
      options.keep = true;
      continue;
    } else throw new Error(`unknown argument ${flag} (--kills N, --max-minutes M, --seed S, --keep)`);
    if (!Number.isFinite(Number(value))) throw new Error(`${flag} needs a number`);
    i++;
  }
  return options;
}

async function main(): Promise<void> {
  const options = parseArgs(process.argv.slice(2));
  options.progress = (line) => process.stderr.write(line + '\n');
  process.stderr.write(
    `kill campaign: seed ${options.seed}, ${options.kills} kills, at most ${options.maxMinutes} min\n`,
  );
  const result = await runCampaign(options);
  process.stdout.write(JSON.stringify(summary(result), null, 2) + '\n');
  if (!result.ok) {
    process.stderr.write(`--- driver output (tail) ---\n${result.serverLog ?? ''}\n`);
    process.exitCode = 1;
  }
}

if (require.main === module) void main();
