import { randomBytes } from 'node:crypto';
import { Pool } from '../../src/thin/pool';
import { seededRandom } from './random';

type Rng = ReturnType<typeof seededRandom>;

/** Byte contents each device should have: the model the engine is compared with. */
export class ContentModel {
  readonly devices = new Map<number, Buffer>();

  create(id: number, size: number): void {
    this.devices.set(id, Buffer.alloc(size));
  }
  snap(id: number, origin: number): void {
    this.devices.set(id, Buffer.from(this.devices.get(origin)!));
  }
  delete(id: number): void {
    this.devices.delete(id);
  }
  write(id: number, offset: number, data: Buffer): void {
    data.copy(this.devices.get(id)!, offset);
  }
  zero(id: number, offset: number, length: number): void {
    this.devices.get(id)!.fill(0, offset, offset + length);
  }
}

/** A random 512-aligned range inside `size`, biased towards small I/O with some large. */
export function randomRange(
  rnd: Rng,
  size: number,
  maxLength = 256 * 1024,
): { offset: number; length: number } {
  const sectors = size / 512;
  const lenSectors = 1 + rnd.int(rnd.next() < 0.7 ? 16 : maxLength / 512);
  const offset = rnd.int(Math.max(1, sectors - lenSectors)) * 512;
  return { offset, length: Math.min(lenSectors * 512, size - offset) };
}

export function randomData(length: number): Buffer {
  return randomBytes(length);
}

/** Reads every device back and returns the first mismatch with the model, if any. */
export async function compareContent(pool: Pool, model: ContentModel): Promise<string | undefined> {
  for (const [id, want] of model.devices) {
    const got = await pool.device(id).read(0, want.length);
    if (!got.equals(want)) {
      for (let i = 0; i < want.length; i++) {
        if (got[i] !== want[i])
          return `device ${id} differs first at byte ${i} (block ${Math.floor(i / pool.blockBytes)})`;
      }
    }
  }
  return undefined;
}
