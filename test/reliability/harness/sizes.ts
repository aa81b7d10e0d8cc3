/**
 * How big a reliability run is. The CI size runs inside `npm test` (and `npm run test:reliability`) in a
 * few minutes; `RELIABILITY_HEAVY=1` runs the heavy size on demand. Every figure the suite publishes says
 * which size produced it.
 */

export const HEAVY = process.env.RELIABILITY_HEAVY === '1';
export const MODE: 'ci' | 'heavy' = HEAVY ? 'heavy' : 'ci';

export interface Sizes {
  /** Async jobs of the load run, and the clients submitting them at once. */
  loadJobs: number;
  loadClients: number;
  /** SIGKILLs of the daemon under load, each followed by a restart on the same data dir. */
  crashKills: number;
  /** fast-check runs per hostile-input property. */
  fuzzRuns: number;
  /** Rounds of the random backend-fault mix. */
  faultRounds: number;
  /** Requests per side of each timing comparison (others' ids against unknown ids). */
  timingSamples: number;
}

export const SIZES_BY_MODE: Record<'ci' | 'heavy', Sizes> = {
  ci: { loadJobs: 2_000, loadClients: 100, crashKills: 6, fuzzRuns: 200, faultRounds: 24, timingSamples: 150 },
  heavy: { loadJobs: 6_000, loadClients: 100, crashKills: 24, fuzzRuns: 2_000, faultRounds: 120, timingSamples: 600 },
};

export const SIZES: Sizes = SIZES_BY_MODE[MODE];
