// Child process for the mapping-journal test: writes to device 1 of a pool (flushing when told
// to), reports the writes acknowledged, then dies by SIGKILL without closing the pool.
const { Pool } = require('../../dist/thin/pool');
const { fillPattern } = require('./crash-pattern');

const [dir, mode] = process.argv.slice(2);

(async () => {
  const pool = await Pool.open(dir, { commitIntervalMs: 0 });
  const dev = pool.device(1);
  await dev.write(0, fillPattern(Buffer.alloc(192 * 1024), 1));
  await dev.write(2 ** 20 + 4096, fillPattern(Buffer.alloc(4096), 2));
  await dev.trim(4 * 2 ** 20, 64 * 1024);
  if (mode === 'flush') await dev.flush();
  process.stdout.write('acked\n');
  process.kill(process.pid, 'SIGKILL');
})().catch((e) => {
  process.stderr.write(`${e.stack}\n`);
  process.exit(3);
});
