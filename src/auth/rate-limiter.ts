import { PixeldError } from '../errors.js';
import { TokenBuckets } from './token-buckets.js';

export interface RateLimits {
  requestsPerMinute: number;
  imagesPerMinute: number;
}

export interface RateDecision {
  headers: Record<string, string>;
}

/**
 * Per-owner allowances of requests and of images (the sum of n), a minute's worth each. A submit takes
 * its request before its body is read, so a refused caller costs no upload; its images once the body is
 * parsed and n is known. A request whose images are then refused keeps its request spent: the allowance
 * of requests is what bounds the bodies a caller can make the daemon read, and that body was read.
 */
export class OwnerRateLimiter {
  private readonly requests: TokenBuckets;
  private readonly images: TokenBuckets;

  constructor(limits: RateLimits, now: () => number) {
    this.requests = new TokenBuckets(limits.requestsPerMinute, now);
    this.images = new TokenBuckets(limits.imagesPerMinute, now);
  }

  /** Takes one request from the owner's allowance, or throws 429 without taking it. */
  takeRequest(owner: string): void {
    if (this.requests.tokens(owner) < 1) {
      throw new PixeldError('rate_limit_exceeded', `rate limit: at most ${this.requests.perMinute} requests a minute`, {
        retryAfterSeconds: this.requests.secondsUntil(owner, 1),
        headers: this.headers(owner),
      });
    }
    this.requests.take(owner, 1);
  }

  /**
   * Takes `images` from the owner's allowance, or throws 429 without taking any. More images than a
   * minute's allowance can never be granted: that is a 400 the caller must not retry.
   */
  takeImages(owner: string, images: number): RateDecision {
    const { perMinute } = this.images;
    if (images > perMinute) {
      throw new PixeldError('invalid_n', `n is ${images}, but this daemon grants a caller at most ${perMinute} images a minute`, {
        param: 'n',
      });
    }
    if (this.images.tokens(owner) < images) {
      throw new PixeldError('rate_limit_exceeded', `rate limit: at most ${perMinute} images a minute`, {
        retryAfterSeconds: this.images.secondsUntil(owner, images),
        headers: this.headers(owner),
      });
    }
    this.images.take(owner, images);
    return { headers: this.headers(owner) };
  }

  private headers(owner: string): Record<string, string> {
    return {
      'X-RateLimit-Limit': String(this.requests.perMinute),
      'X-RateLimit-Remaining': String(Math.floor(this.requests.tokens(owner))),
      'X-RateLimit-Limit-Images': String(this.images.perMinute),
      'X-RateLimit-Remaining-Images': String(Math.floor(this.images.tokens(owner))),
    };
  }
}
