// Readiness of detached helpers: polled, or told on a pipe (what nbd-reconnect -R does).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ExecError, spawnDetached } from '../../src/exec';
import { processAlive } from '../../src/util/process';

describe('spawnDetached', () => {
  let dir: string;
  const started: number[] = [];
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spawn-detached-'))));
  afterEach(() => {
    for (const pid of started.splice(0)) if (processAlive(pid)) process.kill(pid, 'SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('is ready once the program writes a line on fd 3', async () => {
    const pid = await spawnDetached('sh', ['-c', 'sleep 0.2; echo ready >&3; exec 3>&-; exec sleep 30'], {
      logFile: path.join(dir, 'log'),
      ready: 'fd3',
    });
    started.push(pid);
    expect(processAlive(pid)).toBe(true);
  });

  it('reports a program that exits before it is ready, with its output', async () => {
    const failing = spawnDetached('sh', ['-c', 'echo no such device >&2; exit 1'], {
      logFile: path.join(dir, 'log'),
      ready: 'fd3',
    });
    await expect(failing).rejects.toThrow(ExecError);
    await expect(failing).rejects.toThrow(/exited early \(1\): no such device/);
  });

  it('still polls a condition when told to', async () => {
    const flag = path.join(dir, 'flag');
    const pid = await spawnDetached('sh', ['-c', `touch ${flag}; exec sleep 30`], {
      logFile: path.join(dir, 'log'),
      ready: () => fs.existsSync(flag),
    });
    started.push(pid);
    expect(processAlive(pid)).toBe(true);
  });
});
