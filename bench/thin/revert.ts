// Revert at scale (issue: revert and era): revert latency of a volume with 1 GiB mapped against
// one with 256 GiB mapped, in the same run, both pools with era tracking on (the driver's
// default). Each round writes one block and reverts the volume to its snapshot.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { machineLine, median, percentile, updateBenchmarkSection } from '../report';
import { mappedPool, revertLatencies } from './pool-fixtures';
import { log } from '../../src/log';

log.level = 'warn';

const quick = process.argv.includes('--quick');
const SMALL = 16_384; // 1 GiB of 64 KiB blocks
const BIG = quick ? 1_048_576 : 4_194_304; // 64 or 256 GiB
const ROUNDS = 60;
const gib = (blocks: number) => (blocks * 64) / 1024 / 1024;
const fmt = (x: number) => x.toFixed(2);

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(process.env.BENCH_DIR ?? os.tmpdir(), 'thinpool-revert-bench-'));
  try {
    const results: number[][] = [];
    for (const [name, blocks, metadataBytes] of [
      ['small', SMALL, 64 * 2 ** 20],
      ['big', BIG, 1024 * 2 ** 20],
    ] as const) {
      const t0 = Date.now();
      const pool = await mappedPool(path.join(work, name), blocks, { metadataBytes, era: true });
      process.stderr.write(`built ${gib(blocks)} GiB mapped in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
      await pool.createSnap(10, 0);
      results.push(await revertLatencies(pool, 0, 10, blocks, ROUNDS));
      await pool.close();
      fs.rmSync(path.join(work, name), { recursive: true, force: true });
    }
    const [small, big] = results;
    const ratio = median(big) / median(small);
    const row = (blocks: number, v: number[], r = '') =>
      `| revert latency, ${gib(blocks)} GiB mapped | p50 ${fmt(median(v))} ms, p99 ${fmt(percentile(v, 99))} ms | ${r} |`;
    const section = [
      '## Revert at scale',
      '',
      `Run with \`bash bench/thin/revert.sh\`${quick ? ' --quick' : ''}, ${new Date().toISOString().slice(0, 10)}, ${machineLine()}.`,
      `Both pools file-backed, with era tracking; ${ROUNDS} reverts each (one 4 KiB write, then the`,
      'revert: one pool commit). The mappings are built through the metadata API.',
      '',
      '| measurement | result | ratio |',
      '| --- | --- | --- |',
      row(SMALL, small),
      row(BIG, big, `${fmt(ratio)}×`),
      '',
      `- revert latency flat in mapped size: ${ratio <= 1.25 ? 'yes' : 'NO'} (${fmt(ratio)}×)`,
      '',
    ].join('\n');
    process.stdout.write(section + '\n');
    if (!process.argv.includes('--no-docs')) updateBenchmarkSection(section);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
