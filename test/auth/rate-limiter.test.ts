import { describe, expect, it } from 'vitest';
import { ApiKeyRing } from '../../src/auth/api-keys.js';
import { OwnerRateLimiter } from '../../src/auth/rate-limiter.js';
import { PixeldError } from '../../src/errors.js';
import { createHash } from 'node:crypto';

describe('per-owner rate limits', () => {
  const refusal = (take: () => unknown): PixeldError => {
    try {
      take();
    } catch (err) {
      return err as PixeldError;
    }
    throw new Error('not refused');
  };

  it('allows a burst of requests up to the limit, then 429 with Retry-After and counters, and refills over time', () => {
    let now = 0;
    const limiter = new OwnerRateLimiter({ requestsPerMinute: 3, imagesPerMinute: 100 }, () => now);
    limiter.takeRequest('alice');
    expect(limiter.takeImages('alice', 1).headers['X-RateLimit-Remaining']).toBe('2');
    limiter.takeRequest('alice');
    limiter.takeRequest('alice');
    const refused = refusal(() => limiter.takeRequest('alice'));
    expect(refused.code).toBe('rate_limit_exceeded');
    expect(refused.retryAfterSeconds).toBe(20);
    expect(refused.headers).toMatchObject({ 'X-RateLimit-Limit': '3', 'X-RateLimit-Remaining': '0' });
    // Another owner is untouched.
    expect(() => limiter.takeRequest('bob')).not.toThrow();
    now += 20_000;
    expect(() => limiter.takeRequest('alice')).not.toThrow();
  });

  it('counts images separately, and refuses without spending when images do not fit', () => {
    let now = 0;
    const limiter = new OwnerRateLimiter({ requestsPerMinute: 100, imagesPerMinute: 10 }, () => now);
    limiter.takeImages('alice', 8);
    const refused = refusal(() => limiter.takeImages('alice', 4));
    expect(refused.code).toBe('rate_limit_exceeded');
    expect(refused.message).toMatch(/10 images a minute/);
    expect(refused.retryAfterSeconds).toBe(12);
    expect(limiter.takeImages('alice', 2).headers['X-RateLimit-Remaining-Images']).toBe('0');
    now += 60_000;
    expect(limiter.takeImages('alice', 10).headers['X-RateLimit-Remaining-Images']).toBe('0');
  });

  it('refuses n above a minute of images with 400 invalid_n, not a 429 a client would retry', () => {
    const limiter = new OwnerRateLimiter({ requestsPerMinute: 100, imagesPerMinute: 10 }, () => 0);
    const refused = refusal(() => limiter.takeImages('alice', 11));
    expect({ code: refused.code, status: refused.status, param: refused.param, retryable: refused.retryable }).toEqual({
      code: 'invalid_n',
      status: 400,
      param: 'n',
      retryable: false,
    });
    expect(refused.retryAfterSeconds).toBeUndefined();
    // Nothing was taken.
    expect(limiter.takeImages('alice', 10).headers['X-RateLimit-Remaining-Images']).toBe('0');
  });

  it('keeps a request spent when its images are then refused', () => {
    const limiter = new OwnerRateLimiter({ requestsPerMinute: 2, imagesPerMinute: 1 }, () => 0);
    limiter.takeRequest('alice');
    limiter.takeImages('alice', 1);
    limiter.takeRequest('alice');
    expect(refusal(() => limiter.takeImages('alice', 1)).code).toBe('rate_limit_exceeded');
    expect(refusal(() => limiter.takeRequest('alice')).code).toBe('rate_limit_exceeded');
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
