import { beforeEach, describe, expect, it } from 'vitest';
import { OwnerRateLimiter, type RateLimitBuckets, type RateLimits } from '../../src/auth/rate-limiter.js';
import type { PixeldError } from '../../src/errors.js';
import { silentLogger } from '../../src/obs/logger.js';

/** Opens empty buckets with these limits on this clock. */
export type OpenRateLimitBuckets = (limits: RateLimits, now: () => number) => Promise<RateLimitBuckets>;

/**
 * What the per-owner rate limits do, whatever holds the buckets. Each implementation's test file calls
 * this with a factory that returns empty buckets.
 */
export function describeRateLimiterConformance(name: string, open: OpenRateLimitBuckets): void {
  describe(`per-owner rate limits: ${name}`, () => {
    let now: number;
    const limiter = async (limits: RateLimits) => new OwnerRateLimiter(await open(limits, () => now), silentLogger());
    beforeEach(() => {
      now = 1_700_000_000_000;
    });

    const refusal = async (take: () => Promise<unknown>): Promise<PixeldError> => {
      try {
        await take();
      } catch (err) {
        return err as PixeldError;
      }
      throw new Error('not refused');
    };

    it('allows a burst of requests up to the limit, then 429 with Retry-After and counters, and refills over time', async () => {
      const limits = await limiter({ requestsPerMinute: 3, imagesPerMinute: 100 });
      await limits.takeRequest('alice');
      expect((await limits.takeImages('alice', 1)).headers['X-RateLimit-Remaining']).toBe('2');
      await limits.takeRequest('alice');
      await limits.takeRequest('alice');
      const refused = await refusal(() => limits.takeRequest('alice'));
      expect(refused.code).toBe('rate_limit_exceeded');
      expect(refused.retryAfterSeconds).toBe(20);
      expect(refused.headers).toEqual({
        'X-RateLimit-Limit': '3',
        'X-RateLimit-Remaining': '0',
        'X-RateLimit-Limit-Images': '100',
        'X-RateLimit-Remaining-Images': '99',
      });
      // Another owner is untouched.
      await expect(limits.takeRequest('bob')).resolves.toBeUndefined();
      now += 20_000;
      await expect(limits.takeRequest('alice')).resolves.toBeUndefined();
      expect((await refusal(() => limits.takeRequest('alice'))).code).toBe('rate_limit_exceeded');
    });

    it('counts images separately, and refuses without spending when images do not fit', async () => {
      const limits = await limiter({ requestsPerMinute: 100, imagesPerMinute: 10 });
      await limits.takeImages('alice', 8);
      const refused = await refusal(() => limits.takeImages('alice', 4));
      expect(refused.code).toBe('rate_limit_exceeded');
      expect(refused.message).toMatch(/10 images a minute/);
      expect(refused.retryAfterSeconds).toBe(12);
      expect(refused.headers['X-RateLimit-Remaining-Images']).toBe('2');
      expect((await limits.takeImages('alice', 2)).headers['X-RateLimit-Remaining-Images']).toBe('0');
      now += 60_000;
      expect((await limits.takeImages('alice', 10)).headers).toEqual({
        'X-RateLimit-Limit': '100',
        'X-RateLimit-Remaining': '100',
        'X-RateLimit-Limit-Images': '10',
        'X-RateLimit-Remaining-Images': '0',
      });
    });

    it('refuses n above a minute of images with 400 invalid_n, not a 429 a client would retry', async () => {
      const limits = await limiter({ requestsPerMinute: 100, imagesPerMinute: 10 });
      const refused = await refusal(() => limits.takeImages('alice', 11));
      expect({ code: refused.code, status: refused.status, param: refused.param, retryable: refused.retryable }).toEqual({
        code: 'invalid_n',
        status: 400,
        param: 'n',
        retryable: false,
      });
      expect(refused.retryAfterSeconds).toBeUndefined();
      // Nothing was taken.
      expect((await limits.takeImages('alice', 10)).headers['X-RateLimit-Remaining-Images']).toBe('0');
    });

    it('keeps a request spent when its images are then refused', async () => {
      const limits = await limiter({ requestsPerMinute: 2, imagesPerMinute: 1 });
      await limits.takeRequest('alice');
      await limits.takeImages('alice', 1);
      await limits.takeRequest('alice');
      expect((await refusal(() => limits.takeImages('alice', 1))).code).toBe('rate_limit_exceeded');
      expect((await refusal(() => limits.takeRequest('alice'))).code).toBe('rate_limit_exceeded');
    });

    it('prunes only buckets idle for a minute, which are full again', async () => {
      const buckets = await open({ requestsPerMinute: 1, imagesPerMinute: 10 }, () => now);
      const limits = new OwnerRateLimiter(buckets, silentLogger());
      await limits.takeRequest('alice');
      await limits.takeImages('alice', 10);
      now += 30_000;
      await limits.takeRequest('bob');
      expect(await buckets.pruneIdle()).toBe(0);
      // Alice's buckets are kept: in 30 s half a request and 5 images came back.
      expect((await limits.takeImages('alice', 5)).headers).toMatchObject({ 'X-RateLimit-Remaining': '0', 'X-RateLimit-Remaining-Images': '0' });
      now += 60_000;
      expect(await buckets.pruneIdle()).toBe(3);
      expect(await buckets.pruneIdle()).toBe(0);
      expect((await limits.takeImages('alice', 10)).headers).toMatchObject({ 'X-RateLimit-Remaining': '1', 'X-RateLimit-Remaining-Images': '0' });
    });
  });
}
