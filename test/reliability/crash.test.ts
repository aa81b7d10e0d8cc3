import { rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { killAllChildren, type ChildDaemon } from './harness/child-daemon.js';
import { Clients, newLogicalJob, runWorkers, type LogicalJob } from './harness/clients.js';
import { recordFigures } from './harness/figures.js';
import { checkLedger, readLedger } from './harness/ledger.js';
import { HEAVY, MODE, rng, SEED, SIZES, sleep } from './harness/mode.js';
import { MODEL, payingSetup, PRICE, secretsIn, type PayingSetup } from './harness/billing-child.js';

/**
 * Crashes: `pixeld serve` is SIGKILLed at random moments while 20 paying clients keep submitting and
 * polling, and started again on the same data dir each time. After every kill — with the daemon dead —
 * the books must hold every job a client was told about, no job twice, and exactly one receipt per
 * completed job for its delivered images; after every restart, every job the kill left running must have
 * been recovered (re-queued or failed with a reason), none left processing. Clients whose requests were cut
 * off send them again with the same Idempotency-Key.
 */

const USERS = 5;
const WORKERS = 20;
/** Logical jobs per kill: enough that every kill lands with work queued and running. */
const JOBS_PER_KILL = 40;

let setup: PayingSetup | undefined;

afterAll(async () => {
  await killAllChildren();
  await setup?.chain.anvil.stop();
  if (setup) rmSync(setup.root, { recursive: true, force: true });
});

function recoveryCounts(child: ChildDaemon): { requeued: number; failed: number; cancelled: number } | undefined {
  const line = child.logLines().find((l) => l.message === 'recovered jobs interrupted by the last shutdown');
  return line ? { requeued: Number(line.requeued), failed: Number(line.failed), cancelled: Number(line.cancelled) } : undefined;
}

describe(`crashes: ${SIZES.crashKills} SIGKILLs under load, restarted on the same data dir (${MODE})`, () => {
  it('loses no accepted job, duplicates none, leaves none processing, and keeps receipts exact after every kill', async () => {
    setup = await payingSetup(USERS);
    const s = setup;
    const random = rng(SEED ^ 0x5eed);
    const jobs: LogicalJob[] = Array.from({ length: SIZES.crashKills * JOBS_PER_KILL }, (_, i) => {
      const user = s.users[i % USERS]!;
      return newLogicalJob(random, user.wallet.address, user.auth, MODEL, 0.05);
    });
    const keysSent = new Set(jobs.map((j) => j.key));
    // Slow enough that each kill finds jobs running (3 at a time, 60 ms per image).
    const backend = { concurrency: 3, latencyMsPerImage: 60 };
    let current: ChildDaemon | undefined = await s.start('run 1', backend);
    const clients = new Clients({ url: () => current?.url, signer: s.chain.teeKey.address, pricePerImageWei: PRICE, model: MODEL, waitSeconds: 5 });
    const work = runWorkers(clients, jobs, WORKERS);

    const perKill: string[] = [];
    const violations: string[] = [];
    let processingAtKills = 0;
    let recovered = 0;
    const outputs: string[] = [];
    for (let kill = 1; kill <= SIZES.crashKills; kill += 1) {
      // A random moment: between 0.3 and 2.3 s into this run of the daemon.
      await sleep(300 + Math.floor(random() * 2_000));
      const victim: ChildDaemon = current!;
      current = undefined;
      const exit = await victim.kill('SIGKILL');
      outputs.push(victim.output);
      expect(exit.signal).toBe('SIGKILL');

      const acknowledged = new Map(jobs.filter((j) => j.jobId).map((j) => [j.key, j.jobId!]));
      const ledger = readLedger(s.dataDir);
      const check = checkLedger(ledger, { acknowledged, keysSent, finished: false });
      const processing = ledger.jobs.filter((j) => j.status === 'processing').length;
      processingAtKills += processing;
      for (const v of [...check.lost, ...check.duplicated, ...check.failedWithoutReason, ...check.receiptsWrong]) violations.push(`after kill ${kill}: ${v}`);

      current = await s.start(`run ${kill + 1}`, backend);
      const counts = recoveryCounts(current);
      const recoveredNow = (counts?.requeued ?? 0) + (counts?.failed ?? 0);
      recovered += recoveredNow;
      if (recoveredNow !== processing) violations.push(`after kill ${kill}: ${processing} jobs were processing, the restart recovered ${recoveredNow}`);
      perKill.push(`${kill}: ${acknowledged.size} acknowledged, ${processing} processing, ${check.completed} completed`);
    }

    await work;
    const exit = await current!.kill('SIGTERM');
    outputs.push(current!.output);

    const acknowledged = new Map(jobs.filter((j) => j.jobId).map((j) => [j.key, j.jobId!]));
    const ledger = readLedger(s.dataDir);
    const check = checkLedger(ledger, { acknowledged, keysSent, finished: true });
    const leaked = secretsIn(outputs.join('\n'), s.secrets);
    const killsRequired = HEAVY ? 20 : 1;
    recordFigures({
      scenario: 'crash',
      mode: MODE,
      seed: SEED,
      values: {
        kills: SIZES.crashKills,
        killsRequired,
        restarts: SIZES.crashKills,
        jobs: jobs.length,
        clients: WORKERS,
        processingAtKills,
        recoveredAtRestarts: recovered,
        requestsCutOff: clients.stats.networkRetries,
        idempotentReplays: clients.stats.idempotentReplays,
        completed: check.completed,
        failedWithReason: check.failed,
        receipts: ledger.receipts.length,
        jobsLost: check.lost.length + violations.filter((v) => v.includes('is gone')).length + jobs.filter((j) => j.outcome === undefined).length,
        jobsDuplicated: check.duplicated.length,
        jobsUnfinished: check.unfinished.length,
        receiptsWrong: check.receiptsWrong.length + clients.stats.receiptsWrong.length,
        invariantViolations: violations.length,
        secretsInLog: leaked.length,
      },
    });

    expect(exit, current!.tail()).toEqual({ code: 0, signal: null });
    expect(violations, perKill.join('\n')).toEqual([]);
    expect(clients.stats.unexpected).toEqual([]);
    expect(clients.stats.receiptsWrong).toEqual([]);
    expect(check.lost).toEqual([]);
    expect(check.duplicated).toEqual([]);
    expect(check.unfinished).toEqual([]);
    expect(check.failedWithoutReason).toEqual([]);
    expect(check.receiptsWrong).toEqual([]);
    expect(acknowledged.size).toBe(jobs.length);
    expect(jobs.every((j) => j.outcome !== undefined)).toBe(true);
    expect(check.receiptImages).toBe(check.imagesDelivered);
    // The kills really landed on running work, and clients really had requests cut off.
    expect(processingAtKills).toBeGreaterThan(0);
    expect(clients.stats.networkRetries).toBeGreaterThan(0);
    expect(leaked).toEqual([]);
  }, 900_000);
});
