/** A bucket as stored: the tokens it held at `atMs`. */
export interface BucketState {
  tokens: number;
  atMs: number;
}

/**
 * The tokens a bucket holds at `nowMs`: what it held at `atMs` plus a minute's allowance per minute since,
 * never more than a minute's allowance. A clock behind `atMs` (another replica's, a little slower) refills
 * nothing rather than draining the bucket.
 */
export function refilledTokens(bucket: BucketState, nowMs: number, perMinute: number): number {
  return Math.min(perMinute, bucket.tokens + (Math.max(0, nowMs - bucket.atMs) / 60_000) * perMinute);
}

/** Whole seconds, at least 1, until a bucket holding `tokens` has `count`. */
export function secondsUntilTokens(tokens: number, count: number, perMinute: number): number {
  return Math.max(1, Math.ceil(((count - tokens) / perMinute) * 60));
}

/**
 * Token buckets by key, each holding a minute's allowance and refilling continuously: a burst up to the
 * allowance is fine, a steady rate above it is not. A key idle for a minute is full again, so its bucket
 * can be forgotten without changing anything; that is done once `maxKeys` buckets are held, or when asked.
 */
export class TokenBuckets {
  private readonly buckets = new Map<string, BucketState>();

  /** @param maxKeys buckets held before the idle ones are forgotten. @default 100_000 */
  constructor(
    readonly perMinute: number,
    private readonly now: () => number,
    private readonly maxKeys = 100_000,
  ) {}

  /** The tokens `key` has now; a key never seen has a full minute's allowance. */
  tokens(key: string): number {
    return this.level(key, this.now());
  }

  /** Takes `count` tokens from `key`; callers check `tokens(key)` first. */
  take(key: string, count: number): void {
    const nowMs = this.now();
    const tokens = this.level(key, nowMs) - count;
    if (!this.buckets.has(key) && this.buckets.size >= this.maxKeys) this.forgetIdle();
    this.buckets.set(key, { tokens, atMs: nowMs });
  }

  /** Whole seconds, at least 1, until `key` has `count` tokens. */
  secondsUntil(key: string, count: number): number {
    return secondsUntilTokens(this.tokens(key), count, this.perMinute);
  }

  /** Forgets the buckets idle for a minute (full again); returns how many. */
  forgetIdle(): number {
    const nowMs = this.now();
    let forgotten = 0;
    for (const [key, bucket] of this.buckets) {
      if (nowMs - bucket.atMs >= 60_000) {
        this.buckets.delete(key);
        forgotten += 1;
      }
    }
    return forgotten;
  }

  private level(key: string, nowMs: number): number {
    const bucket = this.buckets.get(key);
    return bucket ? refilledTokens(bucket, nowMs, this.perMinute) : this.perMinute;
  }
}
