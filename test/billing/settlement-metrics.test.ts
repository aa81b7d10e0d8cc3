import { rmSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { TestDaemon } from '../helpers/daemon.js';
import { parseExposition, valueOf, type Exposition } from '../helpers/prometheus.js';
import { useBillingChain } from './chain-hooks.js';
import { PRICE, completedJob, fundedUsers, startBillingDaemon, type BillingChain } from './fixture.js';

/** /metrics' billing figures against a real chain: receipts made by real jobs, settled by the daemon's settler. */

let c: BillingChain;
const cleanups = useBillingChain((chain) => (c = chain));

async function scrape(d: TestDaemon): Promise<Exposition> {
  const res = await fetch(`${d.url}/metrics`);
  expect(res.status).toBe(200);
  return parseExposition(await res.text());
}

describe('/metrics billing figures', () => {
  it('counts unsettled receipts and their wei, and settlement rounds by outcome; a round settles them to 0', { timeout: 60_000 }, async () => {
    const d = await startBillingDaemon(c, { config: { metrics: { access: 'open' } } });
    cleanups.push(() => rmSync(d.dataDir, { recursive: true, force: true }));
    cleanups.push(() => d.close());
    const [user] = await fundedUsers(c, 1);
    const before = await scrape(d);
    expect(valueOf(before, 'pixeld_receipts_unsettled')).toBe(0);
    expect(valueOf(before, 'pixeld_settlement_rounds_total', { outcome: 'run' })).toBe(0);

    await completedJob(d, c, user!, 2);
    await completedJob(d, c, user!, 1);
    const owed = await scrape(d);
    expect(valueOf(owed, 'pixeld_receipts_unsettled')).toBe(2);
    expect(valueOf(owed, 'pixeld_receipts_unsettled_wei')).toBe(Number(3n * PRICE));

    const round = await d.daemon.settler!.runRound({ reason: 'test' });
    expect(round.outcome).toBe('completed');
    const settled = await scrape(d);
    expect(valueOf(settled, 'pixeld_receipts_unsettled')).toBe(0);
    expect(valueOf(settled, 'pixeld_receipts_unsettled_wei')).toBe(0);
    expect(valueOf(settled, 'pixeld_settlement_rounds_total', { outcome: 'run' })).toBe(1);
    expect(valueOf(settled, 'pixeld_settlement_rounds_total', { outcome: 'interrupted' })).toBe(0);
  });
});
