import { defineConfig } from 'vitest/config';

/**
 * `npm run test:reliability`: the reliability suite alone, one file at a time (the load and crash runs
 * measure a child daemon's time and memory: nothing else should compete for the CPU), then
 * docs/RELIABILITY.md written from the figures the files measured (report-reporter.ts).
 * `RELIABILITY_HEAVY=1` selects the heavy sizes; `RELIABILITY_SEED=<n>` replays a run's random choices.
 */
export default defineConfig({
  test: {
    include: ['test/reliability/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 600_000,
    hookTimeout: 300_000,
    globalSetup: ['test/reliability/global-setup.ts'],
    setupFiles: ['./test/support/fail-on-uncaught.ts'],
    reporters: ['default', './test/support/summary-reporter.ts', './test/reliability/report-reporter.ts'],
  },
});
