/** @type {import('jest').Config} */
module.exports = {
  preset: 'ts-jest',
  testEnvironment: '<rootDir>/test/jest-environment.js',
  setupFilesAfterEnv: ['<rootDir>/test/log-capture.ts'],
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // The VM suite boots QEMU and runs on its own (test/vm/run, called by scripts/test).
  testPathIgnorePatterns: ['/node_modules/', '\\.vm\\.test\\.ts$'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }] },
  testTimeout: 120000,
  globalSetup: '<rootDir>/test/global-setup.js',
};
