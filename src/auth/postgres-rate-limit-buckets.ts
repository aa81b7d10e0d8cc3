import type { Pool } from 'pg';
import type { AllowanceKind, RateLimitBuckets, RateLimits } from './rate-limiter.js';
import { refilledTokens } from './token-buckets.js';

/**
 * The owners' buckets in PostgreSQL (`rate_limit_buckets`), shared by every replica on the database, so
 * an owner has one allowance however many replicas serve it.
 *
 * A take is one statement: an upsert that refills the bucket by the time elapsed, caps it at a minute's
 * allowance, and subtracts only when that leaves it at zero or above. ON CONFLICT DO UPDATE locks the row
 * and works on its latest committed version, so two replicas racing for the last token queue on the row
 * and the second finds it spent. An owner without a row has a full bucket: its first take inserts the rest.
 *
 * Time is the daemon's injected `now`, as for the job store's leases and expiries, which already need the
 * replicas' clocks to agree. The database clock would need no agreement, but would put the buckets on a
 * clock nothing else here reads, and out of reach of the tests' fake one. Skew is made harmless instead: a
 * clock behind the row's `updated_ms` refills nothing (never a negative refill), and `updated_ms` never moves
 * back, so a slow replica grants less, and a fast one at most its skew's worth of refill (10 ms at 600 a
 * minute: a tenth of a request); no bucket ever holds more than a minute's allowance.
 */
export function postgresRateLimitBuckets(pool: Pool, limits: RateLimits, now: () => number): RateLimitBuckets {
  const perMinute: Record<AllowanceKind, number> = { requests: limits.requestsPerMinute, images: limits.imagesPerMinute };
  return {
    limits,
    async take(owner, kind, count) {
      const nowMs = now();
      // The refilled level, twice: once to decide, once to subtract from. The rows of the owner that this
      // take did not change come from the statement's snapshot, for the X-RateLimit headers only.
      const { rows } = await pool.query<{ kind: AllowanceKind; tokens: number; updated_ms: string; taken: boolean }>(
        `WITH taken AS (
           INSERT INTO rate_limit_buckets AS b (owner, kind, tokens, updated_ms)
           SELECT $1, $2, $4::float8 - $3::float8, $5::bigint WHERE $3::float8 <= $4::float8
           ON CONFLICT (owner, kind) DO UPDATE
             SET tokens = LEAST($4::float8, b.tokens + GREATEST(0, $5::bigint - b.updated_ms)::float8 / 60000 * $4::float8) - $3::float8,
                 updated_ms = GREATEST(b.updated_ms, $5::bigint)
             WHERE LEAST($4::float8, b.tokens + GREATEST(0, $5::bigint - b.updated_ms)::float8 / 60000 * $4::float8) >= $3::float8
           RETURNING b.kind, b.tokens, b.updated_ms
         )
         SELECT kind, tokens, updated_ms, true AS taken FROM taken
         UNION ALL
         SELECT kind, tokens, updated_ms, false AS taken FROM rate_limit_buckets
         WHERE owner = $1 AND kind NOT IN (SELECT kind FROM taken)`,
        [owner, kind, count, perMinute[kind], nowMs],
      );
      const tokens = { ...perMinute };
      for (const row of rows) {
        tokens[row.kind] = refilledTokens({ tokens: row.tokens, atMs: Number(row.updated_ms) }, nowMs, perMinute[row.kind]);
      }
      return { taken: rows.some((row) => row.taken), tokens };
    },
    async pruneIdle() {
      // A row untouched for a minute is full again (a take never leaves it below zero): deleting it
      // changes no allowance. A take racing the delete either comes first (and the delete, re-checking
      // the updated row, skips it) or finds no row and starts a full bucket.
      const { rowCount } = await pool.query('DELETE FROM rate_limit_buckets WHERE updated_ms <= $1', [now() - 60_000]);
      return rowCount ?? 0;
    },
  };
}
