// How commands print: JSON for scripts (--json), aligned "key: value" lines for people.

export function printResult(value: Record<string, unknown>, json: boolean): void {
  if (json) {
    process.stdout.write(JSON.stringify(value, null, 2) + '\n');
    return;
  }
  const width = Math.max(...Object.keys(value).map((k) => k.length));
  for (const [key, v] of Object.entries(value)) {
    process.stdout.write(
      `${key.padEnd(width)}  ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}\n`,
    );
  }
}
