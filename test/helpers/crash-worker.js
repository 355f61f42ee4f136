// Child process for the crash test: random sequential I/O on a pool until it is SIGKILLed.
// Before each operation it appends the operation to a journal; after each write it appends an
// acknowledgement, after each flush (or snapshot, which commits) a durability marker. The
// parent replays the journal.
const fs = require('node:fs');
const { Pool } = require('../../dist/thin/pool');
const { fillPattern } = require('./crash-pattern');

const [dir, seedText, journal] = process.argv.slice(2);
let state = Number(seedText) >>> 0;
const rnd = () => {
  state = (state * 1664525 + 1013904223) >>> 0;
  return state / 4294967296;
};
const log = (entry) => fs.appendFileSync(journal, JSON.stringify(entry) + '\n');

(async () => {
  const pool = await Pool.open(dir, { commitIntervalMs: 150 });
  const ids = pool.listDevices().map((d) => d.id);
  log({ op: 'ready' });
  for (let n = 0; ; n++) {
    const id = ids[Math.floor(rnd() * ids.length)];
    const dev = pool.device(id);
    const sectors = dev.sizeBytes / 512;
    const len = 512 * (1 + Math.floor(rnd() * (rnd() < 0.8 ? 16 : 512)));
    const offset = 512 * Math.floor(rnd() * (sectors - len / 512));
    const r = rnd();
    if (r < 0.6) {
      const tag = (Number(seedText) * 100000 + n) >>> 0;
      log({ op: 'write', id, offset, length: len, tag });
      await dev.write(offset, fillPattern(Buffer.alloc(len), tag), { fua: rnd() < 0.05 });
      log({ op: 'acked' });
    } else if (r < 0.7) {
      log({ op: 'zero', id, offset, length: len });
      await dev.trim(offset, len);
      log({ op: 'acked' });
    } else if (r < 0.78) {
      log({ op: 'zero', id, offset, length: len });
      await dev.writeZeroes(offset, len, { noHole: rnd() < 0.5 });
      log({ op: 'acked' });
    } else if (r < 0.96 || ids.length >= 8) {
      await dev.flush();
      log({ op: 'durable' });
    } else {
      const snap = Math.max(...ids) + 1;
      log({ op: 'snap', id: snap, origin: id });
      await pool.createSnap(snap, id);
      ids.push(snap);
      log({ op: 'durable' });
    }
  }
})().catch((e) => {
  log({ op: 'error', message: e.message });
  process.exit(3);
});
