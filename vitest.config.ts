import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native modules (better-sqlite3, sharp) are happiest in child processes.
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // An uncaught exception or unhandled rejection fails the test it happened in, not only the run.
    setupFiles: ['./test/support/fail-on-uncaught.ts'],
    reporters: ['default', './test/support/summary-reporter.ts'],
  },
});
