import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ApiKeyRing } from '../../src/auth/api-keys.js';
import { memoryRateLimitBuckets } from '../../src/auth/memory-rate-limit-buckets.js';
import { describeRateLimiterConformance } from './rate-limiter-conformance.js';

describeRateLimiterConformance('in memory', async (limits, now) => memoryRateLimitBuckets(limits, now));

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
