import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const repoRoot = path.resolve(__dirname, '../../..');

/** Replaces the `## heading` section of docs/benchmarks.md (or appends it), leaving others alone. */
export function updateBenchmarkSection(section: string): void {
  const file = path.join(repoRoot, 'docs', 'benchmarks.md');
  const heading = section.split('\n', 1)[0];
  let text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '# Benchmarks\n';
  const start = text.indexOf(heading + '\n');
  if (start >= 0) {
    const next = text.indexOf('\n## ', start + heading.length);
    text = text.slice(0, start) + section.trimEnd() + '\n' + (next >= 0 ? text.slice(next) : '');
  } else {
    text = text.trimEnd() + '\n\n' + section.trimEnd() + '\n';
  }
  fs.writeFileSync(file, text);
}

export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

export function median(values: number[]): number {
  return percentile(values, 50);
}

export function machineLine(): string {
  return `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
}
