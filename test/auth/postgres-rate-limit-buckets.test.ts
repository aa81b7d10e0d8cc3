import { Writable } from 'node:stream';
import type { Pool } from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { postgresRateLimitBuckets } from '../../src/auth/postgres-rate-limit-buckets.js';
import { OwnerRateLimiter, type RateLimits } from '../../src/auth/rate-limiter.js';
import type { PixeldError } from '../../src/errors.js';
import { createPostgresPool } from '../../src/jobs/postgres/pool.js';
import { createLogger, silentLogger } from '../../src/obs/logger.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';
import { describeRateLimiterConformance } from './rate-limiter-conformance.js';

/**
 * Rate limits in PostgreSQL: the shared behaviour, then what only shows with several replicas — each its
 * own pool, as each its own process — spending one owner's allowance in one database.
 */

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

describeRateLimiterConformance('postgres', async (limits, now) => {
  const pool = await db.pool();
  await pool.query('TRUNCATE rate_limit_buckets');
  return postgresRateLimitBuckets(pool, limits, now);
});

/** One limiter per pool: a replica. */
function replica(pool: Pool, limits: RateLimits, now: () => number): OwnerRateLimiter {
  return new OwnerRateLimiter(postgresRateLimitBuckets(pool, limits, now), silentLogger());
}

const outcome = (take: Promise<unknown>): Promise<string> =>
  take.then(
    () => 'granted',
    (err: PixeldError) => err.code,
  );

describe('rate limits shared by replicas on one database', () => {
  let pools: Pool[];
  beforeAll(async () => {
    pools = [await db.pool(), await db.pool()];
  });

  it('gives an owner one allowance across replicas, each seeing what the other spent', async () => {
    const now = () => 1_700_000_000_000;
    const limits = { requestsPerMinute: 3, imagesPerMinute: 10 };
    const [a, b] = [replica(pools[0]!, limits, now), replica(pools[1]!, limits, now)];
    await a.takeRequest('shared-1');
    expect((await b.takeImages('shared-1', 4)).headers).toMatchObject({ 'X-RateLimit-Remaining': '2', 'X-RateLimit-Remaining-Images': '6' });
    await b.takeRequest('shared-1');
    expect((await a.takeImages('shared-1', 6)).headers).toMatchObject({ 'X-RateLimit-Remaining': '1', 'X-RateLimit-Remaining-Images': '0' });
    await a.takeRequest('shared-1');
    for (const r of [a, b]) {
      expect(await outcome(r.takeRequest('shared-1'))).toBe('rate_limit_exceeded');
      expect(await outcome(r.takeImages('shared-1', 1))).toBe('rate_limit_exceeded');
    }
  });

  it('grants exactly the allowance to takes racing from two replicas for the last tokens, never more', async () => {
    const now = () => 1_700_000_000_000;
    const limits = { requestsPerMinute: 25, imagesPerMinute: 10 };
    const replicas = [replica(pools[0]!, limits, now), replica(pools[1]!, limits, now)];
    const requests = await Promise.all(replicas.flatMap((r) => Array.from({ length: 30 }, () => outcome(r.takeRequest('racer')))));
    expect(requests.filter((o) => o === 'granted')).toHaveLength(25);
    expect(requests.filter((o) => o === 'rate_limit_exceeded')).toHaveLength(35);
    // Takes of 3 images from a bucket of 10: three fit, one token is left that none of them can have.
    const images = await Promise.all(replicas.flatMap((r) => Array.from({ length: 10 }, () => outcome(r.takeImages('racer', 3)))));
    expect(images.filter((o) => o === 'granted')).toHaveLength(3);
    const { rows } = await pools[0]!.query("SELECT kind, tokens FROM rate_limit_buckets WHERE owner = 'racer' ORDER BY kind");
    expect(rows).toEqual([
      { kind: 'images', tokens: 1 },
      { kind: 'requests', tokens: 0 },
    ]);
  });

  it('refills by the latest clock to have touched a bucket: a replica whose clock is behind refills nothing', async () => {
    const t = 1_700_000_000_000;
    let aNow = t;
    const limits = { requestsPerMinute: 60, imagesPerMinute: 60 };
    const a = replica(pools[0]!, limits, () => aNow);
    const b = replica(pools[1]!, limits, () => t - 5_000);
    await a.takeImages('skewed', 60);
    // B, five seconds behind, finds the bucket as A left it: empty.
    expect(await outcome(b.takeImages('skewed', 1))).toBe('rate_limit_exceeded');
    aNow = t + 2_000;
    await a.takeImages('skewed', 1);
    // A's two seconds refilled two images and A took one; B, seven seconds behind the bucket, takes the other
    // (a clock behind refills nothing, and drains nothing either).
    expect(await outcome(b.takeImages('skewed', 1))).toBe('granted');
    // B's take left the bucket's time at A's: had it pulled it back to B's clock, A would find seven images.
    expect(await outcome(a.takeImages('skewed', 1))).toBe('rate_limit_exceeded');
  });
});

describe('rate limits when the database cannot be reached', () => {
  it('refuse with a retryable 503 database_unavailable, and log why, rather than let requests through', async () => {
    const lines: string[] = [];
    const logger = createLogger({
      level: 'info',
      stream: new Writable({
        write(chunk: Buffer, _enc, done) {
          lines.push(chunk.toString());
          done();
        },
      }),
    });
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    const pool = createPostgresPool({ url: 'postgres://postgres@127.0.0.1:1/nothing', connectTimeoutMs: 1_000 });
    try {
      const limiter = new OwnerRateLimiter(postgresRateLimitBuckets(pool, { requestsPerMinute: 10, imagesPerMinute: 10 }, Date.now), logger);
      for (const take of [() => limiter.takeRequest('alice'), () => limiter.takeImages('alice', 1)]) {
        const refused = await take().then(
          () => undefined,
          (err: PixeldError) => err,
        );
        expect(refused?.toBody().error).toMatchObject({ code: 'database_unavailable', type: 'server_error', param: null });
        expect({ status: refused?.status, retryable: refused?.retryable, retryAfterSeconds: refused?.retryAfterSeconds }).toEqual({
          status: 503,
          retryable: true,
          retryAfterSeconds: 5,
        });
      }
      expect(lines.filter((l) => l.includes('rate limits: the buckets could not be read') && l.includes('ECONNREFUSED'))).toHaveLength(2);
    } finally {
      await pool.end();
    }
  });
});
