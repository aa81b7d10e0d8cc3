import type { AllowanceKind, RateLimitBuckets, RateLimits } from './rate-limiter.js';
import { TokenBuckets } from './token-buckets.js';

/**
 * The owners' buckets in this process: right for one daemon on its SQLite file, where no other process
 * spends the same allowance. A take is a check and a write with no await between them, so it is atomic.
 */
export function memoryRateLimitBuckets(limits: RateLimits, now: () => number): RateLimitBuckets {
  const buckets: Record<AllowanceKind, TokenBuckets> = {
    requests: new TokenBuckets(limits.requestsPerMinute, now),
    images: new TokenBuckets(limits.imagesPerMinute, now),
  };
  return {
    limits,
    async take(owner, kind, count) {
      const taken = buckets[kind].tokens(owner) >= count;
      if (taken) buckets[kind].take(owner, count);
      return { taken, tokens: { requests: buckets.requests.tokens(owner), images: buckets.images.tokens(owner) } };
    },
    async pruneIdle() {
      return buckets.requests.forgetIdle() + buckets.images.forgetIdle();
    },
  };
}
