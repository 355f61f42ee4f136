// The injected-I/O-error campaign in CI: every case of faults/cases.ts once with EIO and once with
// ENOSPC (the full run with rounds: bash test/stress/fault-campaign.sh). Each case fails chosen
// writes or syncs of the data or metadata file through an nbdkit+nbdfuse layer and checks what
// the client was told, the pool's mode, thin_check and every acknowledged page.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CASES, ERRNOS, runCase } from './faults/cases';

jest.setTimeout(120_000);

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'thinpool-faults-'));
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

describe.each(ERRNOS)('%s injected', (errno) => {
  it.each(CASES.map((c) => [c.name, c] as const))('%s', async (name, c) => {
    const dir = fs.mkdtempSync(path.join(work, 'case-'));
    const r = await runCase(c, errno, dir);
    if (!r.ok) throw new Error(`${name} ${errno}: ${r.problems.join('; ')}\n${r.log}`);
    expect(r.hits).toBeGreaterThan(0);
    expect(r.replies).not.toBe('');
    expect(r.thinCheck).toMatch(/ ok/);
    expect(r.thinCheck).not.toMatch(/exit/);
    expect(r.exactPages).toBeLessThanOrEqual(r.pages);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
