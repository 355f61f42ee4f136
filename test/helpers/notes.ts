// What a test wants kept besides its verdict (seeds, timings, counts): appended to
// var/test-notes.log and shown with the test's log lines when it fails, so that a passing run
// prints nothing but jest's own lines.
import fs from 'node:fs';
import path from 'node:path';

const NOTES = path.resolve(__dirname, '../../var/test-notes.log');

export function note(text: string): void {
  const state = expect.getState();
  const test = state.currentTestName ?? path.basename(state.testPath ?? 'unknown test');
  fs.mkdirSync(path.dirname(NOTES), { recursive: true });
  fs.appendFileSync(NOTES, `${new Date().toISOString()} ${test}: ${text}\n`);
  (globalThis as { __testLogLines?: string[] }).__testLogLines?.push(`note: ${text}\n`);
}
