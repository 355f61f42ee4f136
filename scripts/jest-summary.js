// Prints "N passed, N failed" from jest's --json results (what CI reads).
const fs = require('node:fs');

const file = process.argv[2];
let results;
try {
  results = JSON.parse(fs.readFileSync(file, 'utf8'));
} catch (e) {
  console.log(`0 passed, 1 failed`);
  console.error(`cannot read jest results from ${file}: ${e.message}`);
  process.exit(0);
}
// A suite that failed to load counts as a failure even though it ran no test.
const brokenSuites = results.testResults.filter(
  (s) => s.status === 'failed' && s.assertionResults.length === 0,
).length;
console.log(`${results.numPassedTests} passed, ${results.numFailedTests + brokenSuites} failed`);
