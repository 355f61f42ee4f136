// What a node staged, kept on disk so that unstaging works after the driver restarts.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../util/atomic-file';
import type { Attachment, Grant } from './attachment';

export interface StagedVolume {
  volumeId: string;
  stagingPath: string;
  block: boolean;
  fsType?: string;
  mountFlags?: string[];
  readOnly: boolean;
  grant: Grant;
  attachment: Attachment;
}

export class NodeState {
  constructor(readonly dir: string) {
    fs.mkdirSync(path.join(dir, 'staged'), { recursive: true });
  }

  /** A short, path-safe key for a volume id. */
  key(volumeId: string): string {
    return createHash('sha256').update(volumeId).digest('hex').slice(0, 24);
  }

  workDir(volumeId: string): string {
    const d = path.join(this.dir, 'work', this.key(volumeId));
    fs.mkdirSync(d, { recursive: true });
    return d;
  }

  private file(volumeId: string): string {
    return path.join(this.dir, 'staged', `${this.key(volumeId)}.json`);
  }

  get(volumeId: string): StagedVolume | undefined {
    try {
      return JSON.parse(fs.readFileSync(this.file(volumeId), 'utf8')) as StagedVolume;
    } catch {
      return undefined;
    }
  }

  put(staged: StagedVolume): void {
    writeFileAtomic(this.file(staged.volumeId), JSON.stringify(staged, null, 2) + '\n');
  }

  remove(volumeId: string): void {
    fs.rmSync(this.file(volumeId), { force: true });
    fs.rmSync(path.join(this.dir, 'work', this.key(volumeId)), { recursive: true, force: true });
  }

  all(): StagedVolume[] {
    return fs
      .readdirSync(path.join(this.dir, 'staged'))
      .filter((f) => f.endsWith('.json'))
      .map((f) => JSON.parse(fs.readFileSync(path.join(this.dir, 'staged', f), 'utf8')) as StagedVolume);
  }
}
