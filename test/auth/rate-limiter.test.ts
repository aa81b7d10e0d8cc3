import { describe, expect, it } from 'vitest';
import { ApiKeyRing } from '../../src/auth/api-keys.js';
import { OwnerRateLimiter } from '../../src/auth/rate-limiter.js';
import { PixeldError } from '../../src/errors.js';
import { createHash } from 'node:crypto';

describe('per-owner rate limits', () => {
  it('allows a burst up to the limit, then 429 with Retry-After and counters, and refills over time', () => {
    let now = 0;
    const limiter = new OwnerRateLimiter({ requestsPerMinute: 3, imagesPerMinute: 100 }, () => now);
    expect(limiter.take('alice', 1).headers['X-RateLimit-Remaining']).toBe('2');
    limiter.take('alice', 1);
    limiter.take('alice', 1);
    let refused: PixeldError | undefined;
    try {
      limiter.take('alice', 1);
    } catch (err) {
      refused = err as PixeldError;
    }
    expect(refused?.code).toBe('rate_limit_exceeded');
    expect(refused?.retryAfterSeconds).toBe(20);
    expect(refused?.headers).toMatchObject({ 'X-RateLimit-Limit': '3', 'X-RateLimit-Remaining': '0' });
    // Another owner is untouched.
    expect(() => limiter.take('bob', 1)).not.toThrow();
    now += 20_000;
    expect(() => limiter.take('alice', 1)).not.toThrow();
  });

  it('counts images separately, and refuses without spending when images do not fit', () => {
    let now = 0;
    const limiter = new OwnerRateLimiter({ requestsPerMinute: 100, imagesPerMinute: 10 }, () => now);
    limiter.take('alice', 8);
    expect(() => limiter.take('alice', 4)).toThrow(/10 images a minute/);
    expect(limiter.take('alice', 2).headers['X-RateLimit-Remaining-Images']).toBe('0');
    expect(() => limiter.take('alice', 11)).toThrow(PixeldError);
    now += 60_000;
    expect(limiter.take('alice', 10).headers['X-RateLimit-Remaining-Images']).toBe('0');
  });
});

describe('API keys', () => {
  const sha = (k: string) => createHash('sha256').update(k).digest('hex');
  it('recognises keys by their hash or from env, and nothing else', () => {
    const ring = new ApiKeyRing([{ owner: 'router-a', sha256: sha('sk-alpha') }, { owner: 'router-b', env: 'ROUTER_B_KEY' }], { ROUTER_B_KEY: 'sk-beta' });
    expect(ring.ownerOf('sk-alpha')).toBe('router-a');
    expect(ring.ownerOf('sk-beta')).toBe('router-b');
    expect(ring.ownerOf('sk-alph')).toBeUndefined();
    expect(ring.ownerOf(sha('sk-alpha'))).toBeUndefined();
  });
  it('fails at start-up when a key env var is missing', () => {
    expect(() => new ApiKeyRing([{ owner: 'router-b', env: 'NOPE_NOT_SET' }], {})).toThrow(/NOPE_NOT_SET/);
  });
});
