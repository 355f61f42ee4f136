// Child process for the era test: writes 4 KiB into the given blocks of device 1 (overwrites of
// blocks it owns change no mapping, so only the era journal records them); `snap` in the list
// takes a snapshot there (a checkpoint the era metadata has not committed). Reports its era at
// open and each snapshot's, then dies by SIGKILL without flushing or closing.
const { Pool } = require('../../dist/thin/pool');

const [dir, ...vblocks] = process.argv.slice(2);

(async () => {
  const pool = await Pool.open(dir, { commitIntervalMs: 0 });
  const dev = pool.device(1);
  const opened = pool.era.currentEra;
  const snaps = [];
  for (const v of vblocks) {
    if (v === 'snap') snaps.push((await pool.createSnap('auto', 1)).era);
    else await dev.write(Number(v) * 65536, Buffer.alloc(4096, 0xab));
  }
  process.stdout.write(`acked ${opened} snaps ${snaps.join(',')}\n`);
  process.kill(process.pid, 'SIGKILL');
})().catch((e) => {
  process.stderr.write(`${e.stack}\n`);
  process.exit(3);
});
