import { PixeldError } from '../errors.js';

export interface RateLimits {
  requestsPerMinute: number;
  imagesPerMinute: number;
}

interface Buckets {
  requests: number;
  images: number;
  atMs: number;
}

export interface RateDecision {
  headers: Record<string, string>;
}

/**
 * Per-owner token buckets: one for requests, one for images (the sum of n). A bucket holds a minute's
 * allowance and refills continuously, so a burst up to the limit is fine and a steady rate above it is not.
 */
export class OwnerRateLimiter {
  private readonly owners = new Map<string, Buckets>();

  constructor(
    private readonly limits: RateLimits,
    private readonly now: () => number,
  ) {}

  /** Takes one request and `images` images from the owner's allowance, or throws 429 without taking any. */
  take(owner: string, images: number): RateDecision {
    const b = this.refill(owner);
    const { requestsPerMinute, imagesPerMinute } = this.limits;
    const headers = (requestsLeft: number, imagesLeft: number) => ({
      'X-RateLimit-Limit': String(requestsPerMinute),
      'X-RateLimit-Remaining': String(Math.max(0, Math.floor(requestsLeft))),
      'X-RateLimit-Limit-Images': String(imagesPerMinute),
      'X-RateLimit-Remaining-Images': String(Math.max(0, Math.floor(imagesLeft))),
    });
    if (b.requests < 1) {
      throw new PixeldError('rate_limit_exceeded', `rate limit: at most ${requestsPerMinute} requests a minute`, {
        retryAfterSeconds: secondsUntil(1 - b.requests, requestsPerMinute),
        headers: headers(b.requests, b.images),
      });
    }
    if (images > imagesPerMinute) {
      throw new PixeldError('rate_limit_exceeded', `rate limit: at most ${imagesPerMinute} images a minute`, {
        headers: headers(b.requests, b.images),
      });
    }
    if (b.images < images) {
      throw new PixeldError('rate_limit_exceeded', `rate limit: at most ${imagesPerMinute} images a minute`, {
        retryAfterSeconds: secondsUntil(images - b.images, imagesPerMinute),
        headers: headers(b.requests, b.images),
      });
    }
    b.requests -= 1;
    b.images -= images;
    return { headers: headers(b.requests, b.images) };
  }

  private refill(owner: string): Buckets {
    const nowMs = this.now();
    const { requestsPerMinute, imagesPerMinute } = this.limits;
    let b = this.owners.get(owner);
    if (!b) {
      b = { requests: requestsPerMinute, images: imagesPerMinute, atMs: nowMs };
      if (this.owners.size >= 100_000) this.forgetFull(nowMs);
      this.owners.set(owner, b);
      return b;
    }
    const elapsedMin = (nowMs - b.atMs) / 60_000;
    b.requests = Math.min(requestsPerMinute, b.requests + elapsedMin * requestsPerMinute);
    b.images = Math.min(imagesPerMinute, b.images + elapsedMin * imagesPerMinute);
    b.atMs = nowMs;
    return b;
  }

  /** Owners idle for a minute are back to a full allowance: forgetting them changes nothing. */
  private forgetFull(nowMs: number): void {
    for (const [owner, b] of this.owners) if (nowMs - b.atMs >= 60_000) this.owners.delete(owner);
  }
}

function secondsUntil(missing: number, perMinute: number): number {
  return Math.max(1, Math.ceil((missing / perMinute) * 60));
}
