// Injected I/O errors: every case of faults/cases.ts with EIO and ENOSPC, for a number of rounds
// or until the time is up, then a table of outcomes. Exit status 1 when any case failed.
// Run: bash test/stress/fault-campaign.sh [--rounds N] [--max-minutes M] [--only TEXT] [--keep]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import yargs from 'yargs';
import { log } from '../../src/log';
import { CASES, type CaseOutcome, ERRNOS, runCase } from './faults/cases';

function parseArgs(argv: string[]) {
  return yargs(argv)
    .strict()
    .option('rounds', { type: 'number', default: 1 })
    .option('max-minutes', { type: 'number', default: 20 })
    .option('only', { type: 'string', describe: 'run only the cases whose name contains this' })
    .option('keep', { type: 'boolean', default: false })
    .parseSync();
}

function table(rows: CaseOutcome[]): string {
  const head = [
    'case',
    'errno',
    'runs',
    'hits',
    'client was told',
    'pool after',
    'FLUSH after clear',
    'thin_check',
    'exact pages',
    'result',
  ];
  const byCase = new Map<string, CaseOutcome[]>();
  for (const r of rows)
    byCase.set(`${r.name}\0${r.errno}`, [...(byCase.get(`${r.name}\0${r.errno}`) ?? []), r]);
  const lines = [...byCase.values()].map((runs) => {
    const r = runs.find((x) => !x.ok) ?? runs[runs.length - 1];
    const failed = runs.filter((x) => !x.ok).length;
    return [
      r.name,
      r.errno,
      String(runs.length),
      String(r.hits),
      r.replies,
      r.modeAfter + (r.needsCheck ? ', needs_check' : ''),
      r.flushAfterClear,
      r.thinCheck,
      `${r.exactPages}/${r.pages}`,
      failed ? `FAIL ${failed}/${runs.length}` : 'pass',
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const row = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  return [row(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...lines.map(row)].join('\n');
}

async function main(): Promise<number> {
  const options = parseArgs(process.argv.slice(2));
  // The pool opened here for verification logs at info; the outcome table says it all.
  log.silent = true;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'fault-campaign-'));
  const deadline = Date.now() + options.maxMinutes * 60_000;
  const cases = CASES.filter((c) => !options.only || c.name.includes(options.only));
  const rows: CaseOutcome[] = [];
  let stopped = false;
  process.once('SIGINT', () => (stopped = true));
  let n = 0;
  outer: for (let round = 0; round < options.rounds; round++) {
    for (const c of cases) {
      for (const errno of ERRNOS) {
        if (stopped || Date.now() > deadline) break outer;
        const dir = path.join(work, String(n++));
        fs.mkdirSync(dir);
        const r = await runCase(c, errno, dir);
        rows.push(r);
        process.stderr.write(`${r.ok ? 'pass' : 'FAIL'} ${r.name} ${errno} (${r.ms} ms)\n`);
        if (!r.ok) {
          process.stderr.write(`  ${r.problems.join('\n  ')}\n  work dir: ${dir}\n`);
          fs.writeFileSync(path.join(dir, 'log.txt'), r.log);
        } else if (!options.keep) fs.rmSync(dir, { recursive: true, force: true });
      }
    }
  }
  const failed = rows.filter((r) => !r.ok);
  const ms = rows.reduce((t, r) => t + r.ms, 0);
  process.stdout.write(
    `${table(rows)}\n\n${rows.length} runs, ${failed.length} failed, ${(ms / 1000).toFixed(1)} s\n`,
  );
  if (!failed.length && !options.keep) fs.rmSync(work, { recursive: true, force: true });
  return failed.length || rows.length === 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`${(e as Error).stack}\n`);
    process.exit(2);
  },
);
