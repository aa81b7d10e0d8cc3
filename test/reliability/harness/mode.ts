import { inject } from 'vitest';

export { HEAVY, MODE, SIZES, SIZES_BY_MODE, type Sizes } from './sizes.js';

/**
 * Seed of every random choice (kill moments, fault mix, fuzz inputs): one per run, chosen by the reliability
 * config's global setup; `RELIABILITY_SEED=<n>` replays a run.
 */
export const SEED: number =
  process.env.RELIABILITY_SEED !== undefined
    ? Number(process.env.RELIABILITY_SEED)
    : (inject('reliabilitySeed') ?? Math.floor(Math.random() * 2 ** 31));

/** A small seeded generator (mulberry32): the same seed gives the same kill moments and fault mix. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
