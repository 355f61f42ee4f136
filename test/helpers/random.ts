export type Random = ReturnType<typeof seededRandom>;

/** A small seeded PRNG (mulberry32) so a failing random test can be replayed from its seed. */
export function seededRandom(seed: number): { next(): number; int(n: number): number; pick<T>(xs: T[]): T } {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n) => Math.floor(next() * n), pick: (xs) => xs[Math.floor(next() * xs.length)] };
}

export function testSeed(): number {
  const fromEnv = process.env.TEST_SEED;
  return fromEnv ? Number(fromEnv) : Math.floor(Math.random() * 2 ** 31);
}
