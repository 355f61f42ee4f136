// Fixtures for backup tests: a real driver (in process, real pool, unix CSI socket, NBD on TCP
// loopback), a writable source volume reached over NBD, and the CLI as a child process.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultConfig } from '../../src/csi/config';
import { Driver } from '../../src/csi/driver';
import { CsiClient } from '../../src/backup/csi-client';
import { NbdConnectionPool, parseNbdEndpoint } from '../../src/nbd/client';

export const MiB = 1024 * 1024;
export const repoRoot = path.resolve(__dirname, '../..');
export const cliPath = path.join(repoRoot, 'dist/cli/main.js');

export interface BackupDriver {
  dir: string;
  endpoint: string;
  driver: Driver;
  csi: CsiClient;
  close(): Promise<void>;
}

export async function startBackupDriver(poolBytes = 2 * 1024 * MiB): Promise<BackupDriver> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinpool-backup-'));
  const config = defaultConfig({
    role: 'controller',
    endpoint: path.join(dir, 'csi.sock'),
    poolDir: path.join(dir, 'pool'),
    poolDataSizeBytes: poolBytes,
    nbdPort: 0,
    stateDir: path.join(dir, 'node'),
    kubeletDirs: [path.join(dir, 'kubelet')],
    nodeId: 'controller',
  });
  const driver = new Driver(config);
  await driver.start();
  const csi = new CsiClient(config.endpoint);
  return {
    dir,
    endpoint: config.endpoint,
    driver,
    csi,
    async close() {
      csi.close();
      await driver.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A volume published read-write to a test node, with a byte model of what was written. */
export class SourceVolume {
  private constructor(
    readonly csi: CsiClient,
    readonly volumeId: string,
    readonly pool: NbdConnectionPool,
    readonly model: Buffer,
  ) {}

  static async create(csi: CsiClient, name: string, sizeBytes: number): Promise<SourceVolume> {
    const volume = await csi.createVolume({ name, sizeBytes, readOnly: false });
    const grant = await csi.publish(volume.volumeId, 'writer-node', false);
    const pool = await NbdConnectionPool.open(parseNbdEndpoint(grant.endpoint), grant.exportName, 2);
    return new SourceVolume(csi, volume.volumeId, pool, Buffer.alloc(sizeBytes));
  }

  async write(offset: number, data: Buffer): Promise<void> {
    for (let at = 0; at < data.length; at += 16 * MiB) {
      const part = data.subarray(at, at + 16 * MiB);
      await this.pool.write(offset + at, part);
    }
    data.copy(this.model, offset);
  }

  async zero(offset: number, length: number): Promise<void> {
    await this.pool.writeZeroes(offset, length);
    this.model.fill(0, offset, offset + length);
  }

  /** Random writes of 4 KiB-aligned sizes; returns the bytes written. */
  async randomWrites(count: number, maxBytes: number): Promise<number> {
    let total = 0;
    for (let i = 0; i < count; i++) {
      const length = 4096 * (1 + Math.floor(Math.random() * (maxBytes / 4096)));
      const offset = 4096 * Math.floor(Math.random() * ((this.model.length - length) / 4096));
      await this.write(offset, randomBytes(length));
      total += length;
    }
    return total;
  }

  /** CreateSnapshot after a flush; returns the id and a copy of the model at that point. */
  async snapshot(name: string): Promise<{ id: string; content: Buffer }> {
    await this.pool.flush();
    const id = await this.csi.createSnapshot(this.volumeId, name);
    return { id, content: Buffer.from(this.model) };
  }

  async close(): Promise<void> {
    await this.pool.close();
    await this.csi.unpublish(this.volumeId, 'writer-node');
  }
}

/** Reads a whole volume through a read-only publication to a checker node. */
export async function readVolume(csi: CsiClient, volumeId: string, node = 'checker-node'): Promise<Buffer> {
  const grant = await csi.publish(volumeId, node, true);
  const pool = await NbdConnectionPool.open(parseNbdEndpoint(grant.endpoint), grant.exportName, 2);
  try {
    const size = pool.info.sizeBytes;
    const parts = [];
    for (let at = 0; at < size; at += 8 * MiB) parts.push(pool.read(at, Math.min(8 * MiB, size - at)));
    return Buffer.concat((await Promise.all(parts)).map((p) => p.data));
  } finally {
    await pool.close();
    await csi.unpublish(volumeId, node);
  }
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], timeoutMs = 60_000): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [cliPath, ...args],
      { timeout: timeoutMs, maxBuffer: 64 * MiB },
      (error, stdout, stderr) =>
        resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

export function spawnCli(args: string[]): ChildProcess {
  return spawn(process.execPath, [cliPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
}
