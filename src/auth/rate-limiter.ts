import { PixeldError } from '../errors.js';
import type { Logger } from '../obs/logger.js';
import { secondsUntilTokens } from './token-buckets.js';

export interface RateLimits {
  requestsPerMinute: number;
  imagesPerMinute: number;
}

/** An owner has two allowances: submits, and images (the sum of n). */
export type AllowanceKind = 'requests' | 'images';

export interface BucketTake {
  /** The tokens were taken: the bucket held at least that many. A refused take changes nothing. */
  taken: boolean;
  /** The owner's tokens of each kind once the take is done. */
  tokens: Record<AllowanceKind, number>;
}

/**
 * Where the owners' token buckets live: in this process (one daemon on SQLite), or in PostgreSQL, shared
 * by every replica on the database. Every take is atomic: two takes, from whichever replicas, never both
 * spend the same tokens. An owner without a bucket has a full minute's allowance.
 */
export interface RateLimitBuckets {
  readonly limits: RateLimits;
  /** Takes `count` tokens of `kind` from the owner's allowance if it holds that many. */
  take(owner: string, kind: AllowanceKind, count: number): Promise<BucketTake>;
  /** Forgets the buckets untouched for a minute: they are full again, as good as absent. Returns how many. */
  pruneIdle(): Promise<number>;
}

export interface RateDecision {
  headers: Record<string, string>;
}

/**
 * Per-owner allowances of requests and of images (the sum of n), a minute's worth each. A submit takes
 * its request before its body is read, so a refused caller costs no upload; its images once the body is
 * parsed and n is known. A request whose images are then refused keeps its request spent: the allowance
 * of requests is what bounds the bodies a caller can make the daemon read, and that body was read.
 *
 * Buckets that cannot be read (PostgreSQL unreachable) fail closed: 503 `database_unavailable`, before the
 * body is read. Failing open would buy no availability — the submit needs the same database moments later
 * to admit and record the job — but would let every caller upload bodies the daemon cannot take, and on
 * several replicas would silently give each caller one allowance per replica.
 */
export class OwnerRateLimiter {
  constructor(
    private readonly buckets: RateLimitBuckets,
    private readonly logger: Logger,
  ) {}

  /** Takes one request from the owner's allowance, or throws 429 without taking it. */
  async takeRequest(owner: string): Promise<void> {
    const { requestsPerMinute } = this.buckets.limits;
    const { taken, tokens } = await this.take(owner, 'requests', 1);
    if (!taken) {
      throw new PixeldError('rate_limit_exceeded', `rate limit: at most ${requestsPerMinute} requests a minute`, {
        retryAfterSeconds: secondsUntilTokens(tokens.requests, 1, requestsPerMinute),
        headers: this.headers(tokens),
      });
    }
  }

  /**
   * Takes `images` from the owner's allowance, or throws 429 without taking any. More images than a
   * minute's allowance can never be granted: that is a 400 the caller must not retry.
   */
  async takeImages(owner: string, images: number): Promise<RateDecision> {
    const { imagesPerMinute } = this.buckets.limits;
    if (images > imagesPerMinute) {
      throw new PixeldError('invalid_n', `n is ${images}, but this daemon grants a caller at most ${imagesPerMinute} images a minute`, {
        param: 'n',
      });
    }
    const { taken, tokens } = await this.take(owner, 'images', images);
    if (!taken) {
      throw new PixeldError('rate_limit_exceeded', `rate limit: at most ${imagesPerMinute} images a minute`, {
        retryAfterSeconds: secondsUntilTokens(tokens.images, images, imagesPerMinute),
        headers: this.headers(tokens),
      });
    }
    return { headers: this.headers(tokens) };
  }

  private async take(owner: string, kind: AllowanceKind, count: number): Promise<BucketTake> {
    try {
      return await this.buckets.take(owner, kind, count);
    } catch (err) {
      this.logger.error('rate limits: the buckets could not be read; refusing the request', { owner, error: String(err) });
      throw new PixeldError('database_unavailable', 'the daemon cannot reach its database to check your rate limit; retry shortly', {
        cause: err,
        retryAfterSeconds: 5,
      });
    }
  }

  private headers(tokens: Record<AllowanceKind, number>): Record<string, string> {
    const { requestsPerMinute, imagesPerMinute } = this.buckets.limits;
    return {
      'X-RateLimit-Limit': String(requestsPerMinute),
      'X-RateLimit-Remaining': String(Math.floor(tokens.requests)),
      'X-RateLimit-Limit-Images': String(imagesPerMinute),
      'X-RateLimit-Remaining-Images': String(Math.floor(tokens.images)),
    };
  }
}
