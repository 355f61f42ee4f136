// Child process for the era test: overwrites blocks device 1 already owns (no mapping change, so
// only the era journal records them) and provisions one more, reports its era, then dies by
// SIGKILL without flushing or closing.
const { Pool } = require('../../dist/thin/pool');

const [dir, ...vblocks] = process.argv.slice(2);

(async () => {
  const pool = await Pool.open(dir, { commitIntervalMs: 0 });
  const dev = pool.device(1);
  for (const v of vblocks) await dev.write(Number(v) * 65536, Buffer.alloc(4096, 0xab));
  process.stdout.write(`acked ${pool.era.currentEra}\n`);
  process.kill(process.pid, 'SIGKILL');
})().catch((e) => {
  process.stderr.write(`${e.stack}\n`);
  process.exit(3);
});
