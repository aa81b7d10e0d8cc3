import { rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { accountOf } from '../billing/fixture.js';
import { killAllChildren, sampleRss, type ChildDaemon } from './harness/child-daemon.js';
import { Clients, newLogicalJob, runWorkers, type LogicalJob } from './harness/clients.js';
import { recordFigures } from './harness/figures.js';
import { checkLedger, readLedger } from './harness/ledger.js';
import { MODE, rng, SEED, SIZES } from './harness/mode.js';
import { MODEL, payingSetup, PRICE, secretsIn, type PayingSetup } from './harness/billing-child.js';

/**
 * Load: 2,000 async jobs from 100 concurrent clients against `pixeld serve` (a child process) on the reference
 * backend, paid by 25 users with 0G session tokens on anvil. Every accepted job must end completed or failed
 * with a reason, none lost, none duplicated; every receipt must bill exactly the images its job delivered,
 * and settling them on chain must charge each user exactly their receipts; the daemon's RSS must stay under
 * its bound; its job ids must look random; and none of its secrets may appear in its log.
 */

const USERS = 25;
/** Peak RSS allowed for the daemon under this load, at either size (it idles at ~170 MiB under tsx). */
const RSS_LIMIT_BYTES = 600 * 1024 * 1024;

let setup: PayingSetup | undefined;
let daemon: ChildDaemon | undefined;

/** The daemon's JS heap in use, from /v1/admin/metrics once a second. */
function sampleHeap(url: string, adminToken: string): { stop(): number[] } {
  const samples: number[] = [];
  const timer = setInterval(() => {
    fetch(`${url}/v1/admin/metrics`, { headers: { authorization: `Bearer ${adminToken}` } })
      .then((r) => r.json() as Promise<{ process: { heap_used_bytes: number } }>)
      .then((m) => samples.push(m.process.heap_used_bytes))
      .catch(() => undefined);
  }, 1_000);
  return {
    stop() {
      clearInterval(timer);
      return samples;
    },
  };
}

afterAll(async () => {
  await killAllChildren();
  await setup?.chain.anvil.stop();
  if (setup) rmSync(setup.root, { recursive: true, force: true });
});

describe(`load: ${SIZES.loadJobs} async jobs from ${SIZES.loadClients} concurrent clients (${MODE})`, () => {
  it('ends every accepted job, loses and duplicates none, bills exactly what was delivered, stays within its RSS bound', async () => {
    setup = await payingSetup(USERS);
    const s = setup;
    daemon = await s.start('load', { concurrency: 4, latencyMsPerImage: 2 });
    const random = rng(SEED);
    const jobs: LogicalJob[] = Array.from({ length: SIZES.loadJobs }, (_, i) => {
      const user = s.users[i % USERS]!;
      return newLogicalJob(random, user.wallet.address, user.auth, MODEL, 0.03);
    });
    const balancesBefore = await Promise.all(s.users.map((u) => accountOf(s.chain, u.wallet.address)));

    const clients = new Clients({ url: () => daemon?.url, signer: s.chain.teeKey.address, pricePerImageWei: PRICE, model: MODEL });
    const rss = sampleRss(() => daemon, 100);
    const heap = sampleHeap(daemon.url, s.adminToken);
    const rssIdleBytes = daemon.rssBytes();
    const started = Date.now();
    await runWorkers(clients, jobs, SIZES.loadClients);
    const seconds = (Date.now() - started) / 1000;
    const { peakBytes, samples } = rss.stop();
    const heapSamples = heap.stop();

    const acknowledged = new Map(jobs.filter((j) => j.jobId).map((j) => [j.key, j.jobId!]));
    const ended = jobs.filter((j) => j.outcome !== undefined);

    // What the daemon says it did.
    const metricsRes = await fetch(`${daemon.url}/v1/admin/metrics`, { headers: { authorization: `Bearer ${s.adminToken}` } });
    expect(metricsRes.status).toBe(200);
    const metrics = (await metricsRes.json()) as { runner: { jobsCompleted: number; imagesDelivered: number } };

    // Settle every receipt through the admin route: each user's on-chain charge must equal their receipts.
    const settle = await fetch(`${daemon.url}/v1/admin/settle`, { method: 'POST', headers: { authorization: `Bearer ${s.adminToken}` } });
    const round = (await settle.json()) as { outcome: string; users: Array<{ user: string; outcome: string }> };
    expect({ status: settle.status, outcome: round.outcome }).toEqual({ status: 200, outcome: 'completed' });

    const exit = await daemon.kill('SIGTERM');
    expect(exit, daemon.tail()).toEqual({ code: 0, signal: null });
    const ledger = readLedger(s.dataDir);
    const check = checkLedger(ledger, { acknowledged, keysSent: new Set(jobs.map((j) => j.key)), finished: true });
    const chargedWrong: string[] = [];
    for (const [i, u] of s.users.entries()) {
      const address = u.wallet.address;
      const owed = ledger.receipts.filter((r) => r.user === address).reduce((sum, r) => sum + r.feeWei, 0n);
      const after = await accountOf(s.chain, address);
      const charged = balancesBefore[i]!.balance - after.balance;
      if (charged !== owed) chargedWrong.push(`${address}: charged ${charged} wei on chain, receipts say ${owed}`);
    }
    const unsettled = ledger.receipts.filter((r) => r.state !== 'settled').map((r) => `${r.jobId}: ${r.state} after the round`);
    const delivered = ended.reduce((n, j) => n + (j.outcome?.status === 'completed' ? j.outcome.imageSha256.length : 0), 0);
    const receiptsWrong = [...check.receiptsWrong, ...chargedWrong, ...unsettled, ...clients.stats.receiptsWrong];
    if (metrics.runner.imagesDelivered !== delivered) receiptsWrong.push(`metrics count ${metrics.runner.imagesDelivered} images, clients got ${delivered}`);

    // Job ids: 128 random bits each — every hex digit at every position, half the bits set.
    const ids = [...acknowledged.values()];
    const hex = ids.map((id) => id.slice(4));
    let ones = 0;
    for (const h of hex) for (const c of h) ones += Number.parseInt(c, 16).toString(2).replaceAll('0', '').length;
    const onesShare = ones / (hex.length * 128);
    const positionsMissingDigits = Array.from({ length: 32 }, (_, p) => new Set(hex.map((h) => h[p])).size).filter((n) => n < 16).length;

    const leaked = secretsIn(daemon.output, s.secrets);
    const sessionPrefixInLog = daemon.output.includes('app-sk-');
    // No leak in the daemon's JS heap: what survives a major GC in the second half of the run is no more than in
    // the first. Compared only when each half saw a major GC (heap used falling by > 16 MiB between samples):
    // without one, a half's low point is just where the heap happened to be. RSS itself is native memory
    // (sharp/libvips, malloc arenas) that the allocator keeps; it is held to the fixed limit above.
    const half = Math.floor(heapSamples.length / 2);
    const sawGc = (xs: number[]) => xs.some((x, i) => i > 0 && xs[i - 1]! - x > 16 * 2 ** 20);
    const [firstHeap, secondHeap] = [heapSamples.slice(0, half), heapSamples.slice(half)];
    const heapComparable = sawGc(firstHeap) && sawGc(secondHeap);
    const heapFloorFirst = Math.min(...firstHeap);
    const heapFloorSecond = Math.min(...secondHeap);
    recordFigures({
      scenario: 'load',
      mode: MODE,
      seed: SEED,
      values: {
        jobs: SIZES.loadJobs,
        clients: SIZES.loadClients,
        users: USERS,
        seconds: Number(seconds.toFixed(1)),
        jobsPerSecond: Number((SIZES.loadJobs / seconds).toFixed(1)),
        completed: check.completed,
        failedWithReason: check.failed,
        cancelsAccepted: clients.stats.cancelsAccepted,
        imagesDelivered: delivered,
        receiptImages: check.receiptImages,
        receipts: ledger.receipts.length,
        usersSettled: round.users.filter((u) => u.outcome === 'settled').length,
        jobsLost: check.lost.length + (SIZES.loadJobs - ended.length),
        jobsDuplicated: check.duplicated.length,
        jobsUnfinished: check.unfinished.length,
        receiptsWrong: receiptsWrong.length,
        rssIdleMiB: Math.round(rssIdleBytes / 2 ** 20),
        rssPeakMiB: Math.round(peakBytes / 2 ** 20),
        heapFloorFirstHalfMiB: Math.round(heapFloorFirst / 2 ** 20),
        heapFloorSecondHalfMiB: Math.round(heapFloorSecond / 2 ** 20),
        heapFloorsCompared: heapComparable,
        heapSamples: heapSamples.length,
        rssLimitMiB: RSS_LIMIT_BYTES / 2 ** 20,
        rssSamples: samples.length,
        idOnesShare: Number(onesShare.toFixed(4)),
        secretsInLog: leaked.length,
      },
    });

    expect(clients.stats.unexpected, daemon.tail()).toEqual([]);
    expect(acknowledged.size).toBe(SIZES.loadJobs);
    expect(ended.length).toBe(SIZES.loadJobs);
    expect(check.lost).toEqual([]);
    expect(check.duplicated).toEqual([]);
    expect(check.unfinished).toEqual([]);
    expect(check.failedWithoutReason).toEqual([]);
    expect(receiptsWrong).toEqual([]);
    expect(check.completed + check.failed).toBe(SIZES.loadJobs);
    expect(check.receiptImages).toBe(delivered);
    expect(check.imagesDelivered).toBe(delivered);
    expect(metrics.runner.jobsCompleted).toBe(check.completed);
    expect(samples.length).toBeGreaterThan(10);
    expect(peakBytes).toBeLessThan(RSS_LIMIT_BYTES);
    expect(heapSamples.length).toBeGreaterThan(10);
    if (heapComparable) expect(heapFloorSecond).toBeLessThanOrEqual(heapFloorFirst + 32 * 2 ** 20);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.every((id) => /^job_[0-9a-f]{32}$/.test(id))).toBe(true);
    expect(positionsMissingDigits).toBe(0);
    expect(Math.abs(onesShare - 0.5)).toBeLessThan(0.01);
    expect(leaked).toEqual([]);
    expect(sessionPrefixInLog).toBe(false);
  }, 600_000);
});
