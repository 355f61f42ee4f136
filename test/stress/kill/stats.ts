// Campaign counters, printed in the summary.
export class Stats {
  kills = 0;
  killModes: Record<string, number> = {};
  /** CSI method in flight at the moment of the kill → kills. */
  killsDuringCsi: Record<string, number> = {};
  killsDuringFlush = 0;
  nbdRequestsCutShort = 0;
  reopensInProcess = 0;
  verifiedByServer = 0;
  thinCheckRuns = 0;
  checkerRuns = 0;
  writesAcked = 0;
  trimsAcked = 0;
  zeroesAcked = 0;
  flushesAcked = 0;
  fuaWrites = 0;
  bytesWritten = 0;
  onlineReads = 0;
  /** Acknowledged changes still visible at the next check, and those no FLUSH had covered. */
  changesVerified = 0;
  unflushedChangesVerified = 0;
  bytesVerified = 0;
  csiOk: Record<string, number> = {};
  /** Calls cut short by a kill, by outcome found after the restart. */
  cutShortCreates = { happened: 0, undone: 0 };
  cutShortDeletes = { happened: 0, undone: 0 };
  /** Pool.status() had no `catalogue` field (the lmdb catalogue has not landed yet). */
  catalogueFieldAbsent = 0;
  restartMs: number[] = [];
  verifyMs: number[] = [];
  loadMs: number[] = [];

  static bump(map: Record<string, number>, key: string): void {
    map[key] = (map[key] ?? 0) + 1;
  }
}

export function median(xs: number[]): number {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
