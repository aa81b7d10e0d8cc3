import { createHash } from 'node:crypto';
import type { Pool } from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';

/**
 * Two daemons on one PostgreSQL database, each with its own data dir and port: replicas behind one URL.
 * A caller's per-minute allowance is one allowance, whichever replica each of its submits lands on.
 */

const KEYS = { requests: 'sk-replica-requests', images: 'sk-replica-images' };

let db: TestDatabase;
let pool: Pool;
let replicas: TestDaemon[] = [];
/** Added to both replicas' clocks: a minute can pass without waiting for it. */
let clockAheadMs = 0;
const now = () => Date.now() + clockAheadMs;
beforeAll(async () => {
  db = await createTestDatabase();
  pool = await db.pool();
  const config: Partial<ConfigInput> = {
    database: { url: db.url },
    auth: {
      mode: 'api-key',
      apiKeys: Object.entries(KEYS).map(([owner, key]) => ({ owner, sha256: createHash('sha256').update(key).digest('hex') })),
    },
    rateLimits: { requestsPerMinute: 3, imagesPerMinute: 4 },
    backends: [{ id: 'gpu', type: 'reference', concurrency: 2, latencyMsPerImage: 0 }],
    models: [{ id: 'ref', backend: 'gpu', capabilities: ['generation'], sizes: ['64x64'], maxN: 4 }],
  };
  replicas.push(await startTestDaemon({ config, now }));
  replicas.push(await startTestDaemon({ config, now }));
});
afterAll(async () => {
  await Promise.all(replicas.map((r) => r.close()));
  replicas = [];
  await db?.drop();
});

async function submit(replica: TestDaemon, key: string, n = 1) {
  const res = await fetch(`${replica.url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ model: 'ref', prompt: 'a lighthouse', size: '64x64', n }),
  });
  const body = (await res.json()) as Record<string, any>;
  return {
    status: res.status,
    code: body.error?.code as string | undefined,
    message: body.error?.message as string | undefined,
    retryAfter: res.headers.get('retry-after'),
    remaining: res.headers.get('x-ratelimit-remaining'),
    remainingImages: res.headers.get('x-ratelimit-remaining-images'),
  };
}

describe('rate limits across replicas on PostgreSQL', () => {
  it('holds the per-minute request limit across both replicas, each counting what the other granted', async () => {
    const [a, b] = [replicas[0]!, replicas[1]!];
    expect(a.dataDir).not.toBe(b.dataDir);
    expect(await submit(a, KEYS.requests)).toMatchObject({ status: 202, remaining: '2' });
    expect(await submit(b, KEYS.requests)).toMatchObject({ status: 202, remaining: '1' });
    expect(await submit(a, KEYS.requests)).toMatchObject({ status: 202, remaining: '0' });
    for (const replica of [b, a]) {
      const refused = await submit(replica, KEYS.requests);
      expect(refused).toMatchObject({ status: 429, code: 'rate_limit_exceeded', remaining: '0' });
      expect(Number(refused.retryAfter)).toBeGreaterThanOrEqual(1);
    }
  });

  it('holds the per-minute image limit across both replicas', async () => {
    const [a, b] = [replicas[0]!, replicas[1]!];
    expect(await submit(a, KEYS.images, 3)).toMatchObject({ status: 202, remainingImages: '1' });
    expect(await submit(b, KEYS.images, 2)).toMatchObject({
      status: 429,
      code: 'rate_limit_exceeded',
      message: 'rate limit: at most 4 images a minute',
      remainingImages: '1',
    });
    expect(await submit(b, KEYS.images, 1)).toMatchObject({ status: 202, remainingImages: '0' });
  });

  it('lets the sweeper delete buckets idle for a minute, which leaves every allowance as full as it was', async () => {
    const [a, b] = [replicas[0]!, replicas[1]!];
    const buckets = async () => (await pool.query('SELECT count(*)::int AS n FROM rate_limit_buckets')).rows[0].n as number;
    // The tests above left four: two owners, a bucket of requests and one of images each.
    expect(await buckets()).toBe(4);
    expect((await a.daemon.sweeper.sweep()).rateLimitBucketsPruned).toBe(0);
    clockAheadMs += 61_000;
    expect((await b.daemon.sweeper.sweep()).rateLimitBucketsPruned).toBe(4);
    expect(await buckets()).toBe(0);
    expect(await submit(a, KEYS.requests)).toMatchObject({ status: 202, remaining: '2', remainingImages: '3' });
  });
});
