// A crash between any two steps of a device create, snapshot or delete (intent, pool commit,
// catalogue commit) must reconcile on the next open: no device without a catalogue entry, no
// entry without a device, no leaked blocks. The `thinpool` process is really SIGKILLed.
import fs from 'node:fs';
import path from 'node:path';
import { open } from 'lmdb';
import { Pool } from '../../src/thin/pool';
import { checkMetadata } from '../../src/thin/check';
import { thinpool } from '../helpers/cli';
import { makeTempDir } from '../helpers/tmp';
import { thinCheckBoth } from '../helpers/thin-oracle';

const tmp = makeTempDir();
afterAll(() => tmp.cleanup());

const points = ['after-intent', 'after-pool-commit', 'after-catalogue'] as const;
const operations = {
  create: {
    args: (dir: string) => ['thin', 'create', dir, '7', '--size', '8M'],
    fault: 'create',
    target: 7,
    creates: true,
  },
  snap: { args: (dir: string) => ['thin', 'snap', dir, '7', '1'], fault: 'create', target: 7, creates: true },
  delete: { args: (dir: string) => ['thin', 'delete', dir, '1'], fault: 'delete', target: 1, creates: false },
};

describe.each(Object.keys(operations) as (keyof typeof operations)[])('a crash during thin %s', (name) => {
  it.each(points)('%s reconciles to a consistent pool', async (point) => {
    const op = operations[name];
    const dir = path.join(tmp.dir, `${name}-${point}`);
    const pool = await Pool.create(dir, { dataSizeBytes: 2 ** 28 }, { commitIntervalMs: 0 });
    await pool.createThin(1, 8 * 2 ** 20);
    await pool.device(1).write(0, Buffer.alloc(3 * 65536, 0x11));
    await pool.createSnap(2, 1);
    await pool.device(1).write(0, Buffer.alloc(4096, 0x22));
    await pool.close();

    const r = await thinpool(op.args(dir), { env: { THINPOOL_FAULT_POINT: `${op.fault}:${point}` } });
    expect(r.code).toBe(128 + 9);

    const reopened = await Pool.open(dir, { commitIntervalMs: 0 });
    const ids = reopened.listDevices().map((d) => d.id);
    // Only a crash before the pool commit undoes the change.
    const happened = point !== 'after-intent';
    expect(ids.includes(op.target)).toBe(op.creates ? happened : !happened);
    expect(reopened.catalogue.intent).toBeUndefined();
    expect(reopened.catalogue.transactionId).toBe(reopened.status().transactionId);
    // The surviving devices still read what was written.
    if (ids.includes(2)) expect((await reopened.device(2).read(0, 512)).every((x) => x === 0x11)).toBe(true);
    if (ids.includes(1)) expect((await reopened.device(1).read(0, 512)).every((x) => x === 0x22)).toBe(true);
    await reopened.close();
    const metadata = path.join(dir, 'metadata');
    expect(checkMetadata(metadata).errors).toEqual([]);
    for (const c of await thinCheckBoth(metadata)) expect(c).toMatchObject({ code: 0 });
    // And the pool keeps working: the same operation now goes through.
    const again = await thinpool(op.args(dir));
    if (op.creates && happened) expect(again.stderr).toMatch(/already exists/);
    else if (!op.creates && happened) expect(again.stderr).toMatch(/does not exist/);
    else expect(again).toMatchObject({ code: 0 });
  });
});

// A change reaches the LMDB store in a later batch; until then only the intent log has it.
it('keeps a change killed before its batch in the log: read-only commands see it and write nothing', async () => {
  const dir = path.join(tmp.dir, 'batch');
  const pool = await Pool.create(dir, { dataSizeBytes: 2 ** 28 }, { commitIntervalMs: 0 });
  await pool.createThin(1, 8 * 2 ** 20);
  await pool.close();
  const killed = await thinpool(['thin', 'create', dir, '7', '--size', '12M'], {
    env: { THINPOOL_FAULT_POINT: 'create:after-catalogue' },
  });
  expect(killed.code).toBe(128 + 9);

  // The store has not got it: what the commands below see comes from the log.
  const store = open({ path: path.join(dir, 'catalogue'), readOnly: true });
  expect(store.get(['device', 7])).toBeUndefined();
  expect(store.get(['device', 1])).toBeDefined();
  await store.close();
  const files = ['catalogue/data.mdb', 'catalogue/intents.log'].map((f) => path.join(dir, f));
  const before = files.map((f) => fs.readFileSync(f));
  const list = await thinpool(['thin', 'list', dir, '--json']);
  expect(list.code).toBe(0);
  const listed = (JSON.parse(list.stdout) as { devices: { id: number; sizeBytes: number }[] }).devices;
  expect(listed.find((d) => d.id === 7)).toMatchObject({ sizeBytes: 12 * 2 ** 20 });
  files.forEach((f, i) => expect(fs.readFileSync(f).equals(before[i])).toBe(true));

  const reopened = await Pool.open(dir, { commitIntervalMs: 0 });
  expect(reopened.catalogue.get(7)).toMatchObject({ sizeBytes: 12 * 2 ** 20 });
  expect(reopened.catalogue.transactionId).toBe(reopened.status().transactionId);
  await reopened.close();
});
