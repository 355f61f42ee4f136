// CRC-32C over 4 KiB metadata blocks: the native package against the pure-JS fallback, in the
// same run. Every metadata block read from disk or written is checksummed once.
import { performance } from 'node:perf_hooks';
import { randomBytes } from 'node:crypto';
import { crc32c, crc32cImplementation, jsCrc32cForBenchmark } from '../../src/pdata/crc32c';
import { machineLine, updateBenchmarkSection } from '../report';

function throughput(fn: (b: Buffer) => number, blocks: Buffer[], rounds: number): number {
  let sink = 0;
  const t0 = performance.now();
  for (let r = 0; r < rounds; r++) for (const b of blocks) sink ^= fn(b);
  const seconds = (performance.now() - t0) / 1000;
  if (sink === 0.5) console.log(sink); // keep the loop from being optimised away
  return (rounds * blocks.length * 4092) / 2 ** 20 / seconds;
}

const blocks = Array.from({ length: 256 }, () => randomBytes(4096).subarray(4));
const js = jsCrc32cForBenchmark();
for (const b of blocks) if (js(b) !== crc32c(b)) throw new Error('implementations disagree');
throughput(crc32c, blocks, 20);
throughput(js, blocks, 20);
const native = throughput(crc32c, blocks, 400);
const pure = throughput(js, blocks, 100);
const section = [
  '## CRC-32C',
  '',
  `Run with \`npm run bench\`, ${new Date().toISOString().slice(0, 10)}, ${machineLine()}. In use: ${crc32cImplementation}.`,
  '',
  '| implementation | MiB/s over 4 KiB blocks | µs per block | ratio |',
  '| --- | --- | --- | --- |',
  `| @node-rs/crc32 (native) | ${native.toFixed(0)} | ${((4092 / 2 ** 20 / native) * 1e6).toFixed(2)} | 1.00× |`,
  `| crc-32 (pure JS fallback) | ${pure.toFixed(0)} | ${((4092 / 2 ** 20 / pure) * 1e6).toFixed(2)} | ${(pure / native).toFixed(2)}× |`,
].join('\n');
process.stdout.write(section + '\n');
if (!process.argv.includes('--no-docs')) updateBenchmarkSection(section);
