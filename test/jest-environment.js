// Tests run quiet: log lines are kept per test (test/log-capture.ts) and printed only when the
// test, or a hook around it, fails, so a passing run's output holds nothing but jest's own.
const { TestEnvironment } = require('jest-environment-node');

class QuietLogEnvironment extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    this.logLines = [];
    this.global.__testLogLines = this.logLines;
  }

  async handleTestEvent(event) {
    if (event.name === 'test_start') this.logLines.length = 0;
    const failed =
      (event.name === 'test_done' && event.test.errors.length > 0) || event.name === 'hook_failure';
    if (failed && this.logLines.length) {
      const name = event.test?.name ?? event.hook?.type ?? 'hook';
      process.stderr.write(
        `\n--- log of the failed "${name}" ---\n${this.logLines.join('')}--- end of log ---\n`,
      );
      this.logLines.length = 0;
    }
  }
}

module.exports = QuietLogEnvironment;
