import { ARRAY_HEADER_SIZE, PersistentArray } from './array';
import { TransactionManager } from './transaction-manager';

// dm-persistent-data's bitset: a persistent array of 64-bit words, bit i in word i/64 (LSB first).
export class PersistentBitset {
  readonly words: PersistentArray;

  constructor(tm: TransactionManager) {
    this.words = new PersistentArray(tm, 8);
  }

  /** A new bitset of `nrBits` clear bits. */
  create(nrBits: number): number {
    return this.words.create(Math.ceil(nrBits / 64), Buffer.alloc(8));
  }

  /** Grows a bitset of `nrBits` to `newNrBits` (the new bits clear). */
  grow(root: number, nrBits: number, newNrBits: number): number {
    return this.words.grow(root, Math.ceil(nrBits / 64), Math.ceil(newNrBits / 64), Buffer.alloc(8));
  }

  /** Sets the ascending `bits`; returns the new root. */
  set(root: number, bits: readonly number[]): number {
    const words = uniqueWords(bits);
    let next = 0;
    return this.words.update(root, words, (data, offset, word) => {
      for (; next < bits.length && Math.floor(bits[next] / 64) === word; next++) {
        const bit = bits[next] % 64;
        const at = offset + (bit >> 3);
        data[at] |= 1 << (bit & 7);
      }
    });
  }

  /** Calls `fn` for every set bit below `nrBits`, in order. */
  forEachSet(root: number, nrBits: number, fn: (bit: number) => void): void {
    const per = this.words.perBlock;
    for (const { blockIndex, data, nrEntries } of this.words.blocks(root)) {
      const bytes = data.subarray(ARRAY_HEADER_SIZE, ARRAY_HEADER_SIZE + nrEntries * 8);
      const base = blockIndex * per * 64;
      for (let i = 0; i < bytes.length; i++) {
        let byte = bytes[i];
        while (byte) {
          const low = byte & -byte;
          const bit = base + i * 8 + 31 - Math.clz32(low);
          if (bit < nrBits) fn(bit);
          byte ^= low;
        }
      }
    }
  }

  del(root: number): void {
    this.words.del(root);
  }
}

function* uniqueWords(bits: readonly number[]): Generator<number> {
  let last = -1;
  for (const b of bits) {
    const w = Math.floor(b / 64);
    if (w !== last) yield (last = w);
  }
}
