// The SIGKILL campaign in short (the full run: bash test/stress/run kill). A real
// `thinpool serve --role all` under NBD and CSI load is killed again and again; after each kill
// the metadata, the catalogue and every acknowledged write are checked (kill-campaign.ts).
import { testSeed } from '../helpers/random';
import { runCampaign, summary } from './kill-campaign';

const KILLS = Number(process.env.KILL_CAMPAIGN_KILLS ?? 15);

it(`loses nothing acknowledged over ${KILLS} SIGKILLs of the driver under load`, async () => {
  const result = await runCampaign({ kills: KILLS, maxMinutes: 1.5, seed: testSeed() });
  if (!result.ok)
    throw new Error(
      `${JSON.stringify(summary(result), null, 2)}\n--- driver output ---\n${result.serverLog}`,
    );
  const s = result.stats;
  // The time bound may cut a slow run short, never to nothing.
  expect(result.kills).toBeGreaterThanOrEqual(Math.min(KILLS, 8));
  expect(s.thinCheckRuns).toBeGreaterThanOrEqual(2 * result.kills);
  expect(s.checkerRuns).toBeGreaterThanOrEqual(result.kills);
  expect(s.writesAcked).toBeGreaterThan(0);
  expect(s.changesVerified).toBeGreaterThan(0);
  expect(s.reopensInProcess).toBeGreaterThan(0);
}, 180_000);
