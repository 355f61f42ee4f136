/** `parts` without their first `n` bytes (what is left to write after a short writev). */
export function skipBytes(parts: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (const part of parts) {
    if (n >= part.length) {
      n -= part.length;
      continue;
    }
    out.push(n > 0 ? part.subarray(n) : part);
    n = 0;
  }
  return out;
}
