// The catalogue's write-ahead ring on a real file: records come back in order after the store's
// last one, a torn or damaged record ends the sequence, the ring never overwrites a record the
// store does not hold, and records spanning several slots survive a reopen.
import fs from 'node:fs';
import path from 'node:path';
import { IntentLog, IntentLogError } from '../../src/thin/intent-log';
import { makeTempDir } from '../helpers/tmp';

const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

interface Rec {
  id: number;
  note: string;
}

let n = 0;
function fresh(slots?: number): string {
  return path.join(tmp.dir, `log-${n++}${slots ? `-${slots}` : ''}`);
}

function openLog(file: string, stored: number | undefined, slots?: number): IntentLog<Rec> {
  const log = IntentLog.open<Rec>(file, stored, { slots });
  if (!log) throw new Error('no log');
  return log;
}

const ids = (log: IntentLog<Rec>) => log.pending.map((p) => [p.seq, p.record.id]);

it('returns the records after the stored one, in order, and goes on numbering after them', () => {
  const file = fresh();
  const log = openLog(file, 0);
  expect([1, 2, 3].map((id) => log.append({ id, note: `r${id}` }))).toEqual([1, 2, 3]);
  log.close();
  expect(fs.statSync(file).size).toBe(2048 * 4096);

  const all = openLog(file, 0);
  expect(ids(all)).toEqual([
    [1, 1],
    [2, 2],
    [3, 3],
  ]);
  expect(all.pending[1].record.note).toBe('r2');
  all.close();
  const after2 = openLog(file, 2);
  expect(ids(after2)).toEqual([[3, 3]]);
  expect(after2.append({ id: 4, note: 'r4' })).toBe(4);
  after2.close();
  // A store from before the log holds everything: nothing is pending.
  const none = openLog(file, undefined);
  expect(none.pending).toEqual([]);
  expect(none.lastSeq).toBe(4);
  none.close();
  // Read-only: no file is made where there is none.
  expect(IntentLog.open(fresh(), 0, { readOnly: true })).toBeUndefined();
});

it('ends the sequence at a torn record and at a gap', () => {
  const file = fresh();
  const log = openLog(file, 0);
  for (const id of [10, 11, 12]) log.append({ id, note: 'x'.repeat(100) });
  log.close();
  // Slot 2 holds record 3: damage one payload byte, as a write cut short would.
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.from('y'), 0, 1, 2 * 4096 + 40);
  fs.closeSync(fd);
  const torn = openLog(file, 0);
  expect(ids(torn)).toEqual([
    [1, 10],
    [2, 11],
  ]);
  // The torn record was never durable, so its number is given again.
  expect(torn.append({ id: 13, note: 'after' })).toBe(3);
  torn.close();
  expect(ids(openLog(file, 0))).toEqual([
    [1, 10],
    [2, 11],
    [3, 13],
  ]);

  // Damage record 1: records 2 and 3 follow a gap and are not trusted.
  const fd2 = fs.openSync(file, 'r+');
  fs.writeSync(fd2, Buffer.from('y'), 0, 1, 40);
  fs.closeSync(fd2);
  expect(openLog(file, 0).pending).toEqual([]);
  expect(ids(openLog(file, 1))).toEqual([
    [2, 11],
    [3, 13],
  ]);
});

it('never overwrites a record the store does not hold, and wraps once they are released', () => {
  const file = fresh(8);
  const log = openLog(file, 0, 8);
  for (let id = 1; id <= 8; id++) log.append({ id, note: '' });
  expect(() => log.append({ id: 9, note: '' })).toThrow(IntentLogError);
  // Full: the record waits for room to be made (the catalogue stores its batch there).
  let made = 0;
  expect(log.append({ id: 9, note: '' }, () => (made++, log.release(3)))).toBe(9);
  expect(made).toBe(1);
  log.close();
  // Record 9 took slot 0, over record 1; records 4..9 are what a store at seq 3 needs.
  const reopened = openLog(file, 3, 8);
  expect(ids(reopened).map(([seq]) => seq)).toEqual([4, 5, 6, 7, 8, 9]);
  // Held again after the reopen: the slots of 4..8 are not free.
  expect(reopened.append({ id: 10, note: '' })).toBe(10); // slot 1 (record 2's, released)
  expect(reopened.append({ id: 11, note: '' })).toBe(11); // slot 2
  expect(() => reopened.append({ id: 12, note: '' })).toThrow(/no room/);
  reopened.close();
});

it('keeps a record that spans several slots, and refuses one too large for the ring', () => {
  const file = fresh(16);
  const log = openLog(file, 0, 16);
  const big = 'b'.repeat(3 * 4096);
  log.append({ id: 1, note: big });
  log.append({ id: 2, note: 'small' });
  expect(() => log.append({ id: 3, note: 'c'.repeat(5 * 4096) })).toThrow(/too large/);
  log.close();
  const reopened = openLog(file, 0, 16);
  expect(reopened.pending.map((p) => p.record.note.length)).toEqual([big.length, 5]);
  reopened.close();
});

it('refuses a file of the wrong size', () => {
  const file = fresh();
  fs.writeFileSync(file, Buffer.alloc(4096));
  expect(() => IntentLog.open(file, 0)).toThrow(/expected/);
});
