// Which piece of which chunk of a backup chain shows at each offset of the volume: later backups
// win, older data shows through their gaps.
import { type ByteRange, Coverage } from './ranges';
import { RepositoryError } from './repository-errors';
import type { Manifest } from './repository';

/** One piece of the result: `range` of the volume comes from `chunk` (empty hash: zeros). */
export interface PlannedPiece {
  range: ByteRange;
  hash: string;
  /** Where `range` starts inside the chunk. */
  chunkOffset: number;
}

/** What is left visible of each chunk once newer backups cover older ones. */
export function planRestore(chain: Manifest[]): PlannedPiece[] {
  const cell = Math.max(...chain.map((m) => m.blockBytes));
  if (chain.some((m) => cell % m.blockBytes)) throw new RepositoryError('the chain mixes chunk grids');
  const coverage = new Coverage(cell);
  const out: PlannedPiece[] = [];
  for (let i = chain.length - 1; i >= 0; i--) {
    for (const [offset, length, hash] of chain[i].chunks) {
      for (const part of coverage.claim({ offset, length })) {
        out.push({ range: part, hash, chunkOffset: part.offset - offset });
      }
    }
  }
  return out.sort((a, b) => a.range.offset - b.range.offset);
}
