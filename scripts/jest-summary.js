// Prints one "N passed, N failed" line over jest's --json results (what CI reads). Several
// result files (the main suite and the VM suite) add up; a missing or unreadable one counts as
// a failure.
const fs = require('node:fs');

let passed = 0;
let failed = 0;
for (const file of process.argv.slice(2)) {
  let results;
  try {
    results = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    failed += 1;
    console.error(`cannot read jest results from ${file}: ${e.message}`);
    continue;
  }
  // A suite that failed to load counts as a failure even though it ran no test.
  const brokenSuites = results.testResults.filter(
    (s) => s.status === 'failed' && s.assertionResults.length === 0,
  ).length;
  passed += results.numPassedTests;
  failed += results.numFailedTests + brokenSuites;
}
console.log(`${passed} passed, ${failed} failed`);
