import { afterAll, afterEach, beforeAll, beforeEach } from 'vitest';
import { setupBillingChain, type BillingChain } from './fixture.js';

/**
 * One chain for a test file, each test on a fresh snapshot of it: registers the hooks (deploy before all,
 * stop after all, snapshot before each, and after each run the test's cleanups newest first, put mining
 * back on and revert). `onReady` receives the chain once deployed; push cleanups onto the returned list.
 */
export function useBillingChain(onReady: (c: BillingChain) => void): Array<() => Promise<void> | void> {
  let c: BillingChain | undefined;
  let snapshot: string;
  const cleanups: Array<() => Promise<void> | void> = [];
  beforeAll(async () => {
    c = await setupBillingChain();
    onReady(c);
  }, 60_000);
  afterAll(async () => {
    await c?.anvil.stop();
  });
  beforeEach(async () => {
    snapshot = await c!.anvil.snapshot();
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    await c!.anvil.setAutomine(true);
    await c!.anvil.revert(snapshot);
  });
  return cleanups;
}
