import { SyncReadPolicy } from '../../src/util/sync-read-policy';

const MiB = 1024 * 1024;
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('SyncReadPolicy', () => {
  it('runs small reads synchronously up to the limit, larger ones never', () => {
    const policy = new SyncReadPolicy(64 * 1024);
    for (let i = 0; i < 10; i++) expect(policy.runsSync(4096)).toBe(true);
    expect(policy.runsSync(64 * 1024)).toBe(true);
    expect(policy.runsSync(64 * 1024 + 512)).toBe(false);
    expect(new SyncReadPolicy(0).runsSync(512)).toBe(false);
  });

  it('runs only the first large read of an event-loop turn synchronously', async () => {
    const policy = new SyncReadPolicy(MiB);
    expect([1, 2, 3].map(() => policy.runsSync(MiB))).toEqual([true, false, false]);
    expect(policy.runsSync(4096)).toBe(true); // small reads are not held back by a burst
    await nextTurn();
    expect(policy.runsSync(MiB)).toBe(true); // a lone read per turn, as at queue depth 1
    await nextTurn();
    expect(policy.runsSync(MiB)).toBe(true);
  });
});
