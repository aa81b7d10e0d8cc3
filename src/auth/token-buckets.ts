/**
 * Token buckets by key, each holding a minute's allowance and refilling continuously: a burst up to the
 * allowance is fine, a steady rate above it is not. A key idle for a minute is full again, so its bucket
 * can be forgotten without changing anything; that is done once `maxKeys` buckets are held.
 */
export class TokenBuckets {
  private readonly buckets = new Map<string, { tokens: number; atMs: number }>();

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
    if (!this.buckets.has(key) && this.buckets.size >= this.maxKeys) this.forgetIdle(nowMs);
    this.buckets.set(key, { tokens, atMs: nowMs });
  }

  /** Whole seconds, at least 1, until `key` has `count` tokens. */
  secondsUntil(key: string, count: number): number {
    return Math.max(1, Math.ceil(((count - this.tokens(key)) / this.perMinute) * 60));
  }

  private level(key: string, nowMs: number): number {
    const bucket = this.buckets.get(key);
    if (!bucket) return this.perMinute;
    return Math.min(this.perMinute, bucket.tokens + ((nowMs - bucket.atMs) / 60_000) * this.perMinute);
  }

  private forgetIdle(nowMs: number): void {
    for (const [key, bucket] of this.buckets) if (nowMs - bucket.atMs >= 60_000) this.buckets.delete(key);
  }
}
