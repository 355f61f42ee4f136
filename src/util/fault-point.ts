// Crash injection for tests of crash consistency: when THINPOOL_FAULT_POINT names this point,
// the process kills itself with SIGKILL right here, as a power cut or OOM kill would.

export function faultPoint(name: string): void {
  if (process.env.THINPOOL_FAULT_POINT === name) process.kill(process.pid, 'SIGKILL');
}
