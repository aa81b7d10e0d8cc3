import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Wallet, type HDNodeWallet } from 'ethers';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { CommandIo } from '../../src/commands/command-io.js';
import { runJobCli, runJobsCli, type JobReport, type JobsReport } from '../../src/commands/jobs.js';
import { loadConfig } from '../../src/config/load.js';
import { newJobId, type JobResult } from '../../src/jobs/model.js';
import { openStores, type Stores } from '../../src/jobs/open-stores.js';
import type { NewJob, ReceiptSigning } from '../../src/jobs/store.js';
import { signJob } from '../../src/tee/receipt.js';
import { completedJob, daemonConfig, fundedUsers, setupBillingChain, startBillingDaemon, type BillingChain } from '../billing/fixture.js';
import { tempDir, type TestDaemon } from '../helpers/daemon.js';
import { jobParams } from '../helpers/job-params.js';
import { createTestDatabase, truncateAll, type TestDatabase } from '../helpers/postgres.js';

/**
 * `pixeld jobs` and `pixeld job <id>` read the database a daemon wrote: jobs driven through the store's own
 * transitions on a SQLite file and on PostgreSQL, and a job a daemon ran and settled on an anvil chain.
 */

function capture(): { io: CommandIo; out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { stdout: (l) => out.push(l), stderr: (l) => err.push(l), isTTY: false, env: {} }, out, err };
}

const T0 = Date.UTC(2026, 11, 4, 12, 0, 0);
const TEE = new Wallet(`0x${'11'.repeat(32)}`);
const PROVIDER = '0x00000000000000000000000000000000000000Aa';
const PRICE = 1_000_000_000_000_000n;

/** Signs as the runner does, with a dev-mode key, for whatever sequence number the store hands out. */
function signing(job: NewJob, result: JobResult): ReceiptSigning {
  return {
    seqFloor: 0n,
    sign: (seq) =>
      signJob(
        { signer: TEE, address: TEE.address, teeLabel: 'INSECURE-DEV' },
        {
          seq,
          provider: PROVIDER,
          job: job.id,
          model: job.model,
          user: job.owner,
          requestSha256: job.requestSha256,
          imageSha256: result.images.map((i) => i.sha256),
          pricePerImageWei: job.pricePerImageWei,
          feeWei: job.pricePerImageWei * BigInt(result.images.length),
          created: result.created,
        },
      ),
  };
}

const result = (shas: string[]): JobResult => ({
  created: Math.floor(T0 / 1000),
  images: shas.map((sha256) => ({ sha256, mediaType: 'image/png', bytes: 2048, width: 64, height: 64 })),
  size: '64x64',
  quality: 'high',
  outputFormat: 'png',
  background: 'opaque',
  fileToken: 't'.repeat(32),
  warnings: [],
});

interface Setup {
  configFile: string;
  stores: Stores;
  close(): Promise<void>;
}

async function sqliteSetup(): Promise<Setup> {
  const dataDir = tempDir('pixeld-jobs-cli-');
  const configFile = path.join(dataDir, 'pixeld.json');
  writeFileSync(configFile, JSON.stringify({ dataDir }));
  const stores = await openStores(loadConfig({ configPath: configFile, env: {} }).config);
  return {
    configFile,
    stores,
    close: async () => {
      await stores.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

let pg: TestDatabase | undefined;
afterAll(async () => {
  await pg?.drop();
});

async function postgresSetup(): Promise<Setup> {
  pg ??= await createTestDatabase();
  const dataDir = tempDir('pixeld-jobs-cli-');
  const configFile = path.join(dataDir, 'pixeld.json');
  writeFileSync(configFile, JSON.stringify({ dataDir, database: { url: pg.url } }));
  const stores = await openStores(loadConfig({ configPath: configFile, env: {} }).config);
  await truncateAll(await pg.pool());
  return {
    configFile,
    stores,
    close: async () => {
      await stores.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

describe.each([
  ['sqlite', sqliteSetup],
  ['postgres', postgresSetup],
])('pixeld jobs and pixeld job on %s', (_name, setup) => {
  let s: Setup;
  let user: string;
  const ids = { retried: '', failed: '', cancelled: '', pending: '' };
  let newJob: (over: Partial<NewJob>) => NewJob;
  const run = async (cli: typeof runJobsCli, ...args: string[]) => {
    const { io, out, err } = capture();
    const code = await cli([...args, '--config', s.configFile], io);
    return { code, out, err };
  };

  beforeEach(async () => {
    s = await setup();
    const { jobs } = s.stores;
    user = (Wallet.createRandom() as HDNodeWallet).address;
    newJob = (over) => ({
      id: newJobId(),
      owner: user,
      kind: 'generation',
      delivery: 'async',
      model: 'flux',
      backendId: 'gpu0',
      params: jobParams({ n: 2, prompt: 'a red fox, for the secret project', seed: 7 }),
      inputs: [],
      requestSha256: 'a'.repeat(64),
      pricePerImageWei: PRICE,
      fingerprint: 'f'.repeat(64),
      idempotencyKey: undefined,
      baseUrl: 'http://x',
      createdMs: T0,
      ...over,
    });

    // Retried once, then completed on another replica.
    const retried = newJob({ submittedBy: 'replica-a', idempotencyKey: 'k1' });
    await jobs.create(retried, 0);
    const first = (await jobs.claimNext('gpu0', 'replica-b', T0 + 100, 60_000))!;
    await jobs.retryLater(retried.id, first.leaseToken, { code: 'upstream_timeout', message: 'the backend did not answer in 2 s' }, T0 + 4_100, T0 + 2_100);
    const second = (await jobs.claimNext('gpu0', 'replica-c', T0 + 4_100, 60_000))!;
    const done = result(['b'.repeat(64), 'c'.repeat(64)]);
    expect(await jobs.complete(retried.id, second.leaseToken, done, signing(retried, done), T0 + 7_100, T0 + 86_400_000)).toBe(true);

    const failed = newJob({ createdMs: T0 + 10_000, params: jobParams({ n: 1 }) });
    await jobs.create(failed, 0);
    const claim = (await jobs.claimNext('gpu0', 'replica-b', T0 + 10_050, 60_000))!;
    await jobs.fail(failed.id, claim.leaseToken, { code: 'upstream_error', message: 'the backend answered 500' }, T0 + 11_000, T0 + 90_000_000);

    const cancelled = newJob({
      createdMs: T0 + 20_000,
      owner: 'router-key-7',
      model: 'sdxl',
      backendId: 'gpu1',
      kind: 'edit',
      inputs: [
        { role: 'image', sha256: 'd'.repeat(64), mediaType: 'image/jpeg', bytes: 50_000, width: 640, height: 480 },
        { role: 'mask', sha256: 'e'.repeat(64), mediaType: 'image/png', bytes: 900, width: 640, height: 480 },
      ],
    });
    await jobs.create(cancelled, 0);
    await jobs.cancel(cancelled.id, T0 + 21_000, T0 + 90_000_000);

    const pending = newJob({ createdMs: T0 + 30_000, delivery: 'sync', submittedBy: 'replica-a' });
    await jobs.create(pending, 0);
    Object.assign(ids, { retried: retried.id, failed: failed.id, cancelled: cancelled.id, pending: pending.id });
    return () => s.close();
  });

  it('lists the newest jobs first in a table, and says there is no older page', async () => {
    const { code, out, err } = await run(runJobsCli);
    expect(code, err.join('\n')).toBe(0);
    expect(out[0]!.split(/\s{2,}/)).toEqual(['id', 'created (UTC)', 'status', 'model', 'backend', 'n/images', 'attempts', 'owner', 'duration', 'replica']);
    const rows = out.slice(1, -1).map((l) => l.split(/\s{2,}/));
    expect(rows.map((r) => r[0])).toEqual([ids.pending, ids.cancelled, ids.failed, ids.retried]);
    const short = `${user.slice(0, 6)}…${user.slice(-4)}`;
    expect(rows[3]).toEqual([ids.retried, '2026-12-04 12:00:00', 'completed', 'flux', 'gpu0', '2/2', '2', short, '7.1 s', 'replica-c']);
    expect(rows[2]).toEqual([ids.failed, '2026-12-04 12:00:10', 'failed', 'flux', 'gpu0', '1/-', '1', short, '1.0 s', 'replica-b']);
    expect(rows[1]).toEqual([ids.cancelled, '2026-12-04 12:00:20', 'cancelled', 'sdxl', 'gpu1', '2/-', '0', 'router-key-7', '1.0 s', '-']);
    expect(rows[0]).toEqual([ids.pending, '2026-12-04 12:00:30', 'pending', 'flux', 'gpu0', '2/-', '0', short, '-', 'replica-a']);
    expect(out.at(-1)).toBe('4 job(s); no older ones match.');
    expect(err).toEqual(["… opening the daemon's database"]);
  });

  it('filters by status, user (an address in any case) and model', async () => {
    const byStatus = await run(runJobsCli, '--status', 'completed,failed', '--user', user.toLowerCase());
    expect(byStatus.code, byStatus.err.join('\n')).toBe(0);
    expect(byStatus.out.slice(1, -1).map((l) => l.split(/\s+/)[0])).toEqual([ids.failed, ids.retried]);
    const byModel = await run(runJobsCli, '--model', 'sdxl', '--quiet');
    expect(byModel.out.slice(1, -1).map((l) => l.split(/\s+/)[0])).toEqual([ids.cancelled]);
    expect(byModel.err).toEqual([]);
    const none = await run(runJobsCli, '--user', 'nobody');
    expect(none.out).toEqual(['No jobs match.']);
  });

  it('pages with the command its last line prints, without gaps or repeats', async () => {
    const first = await run(runJobsCli, '--limit', '3', '--user', user);
    expect(first.out.slice(1, -1).map((l) => l.split(/\s+/)[0])).toEqual([ids.pending, ids.failed, ids.retried]);
    const next = /^3 job\(s\)\. Next page: pixeld jobs (.*)$/.exec(first.out.at(-1)!);
    expect(next, first.out.at(-1)).not.toBeNull();
    const args = next![1]!.split(' ');
    expect(args).toEqual(['--user', user, '--limit', '3', '--config', s.configFile, '--before', ids.retried]);
    const { io, out } = capture();
    expect(await runJobsCli(args, io)).toBe(0);
    expect(out).toEqual([`No jobs older than ${ids.retried} match.`]);

    const pageOne = await run(runJobsCli, '--limit', '2');
    const pageTwo = await run(runJobsCli, '--limit', '2', '--before', ids.cancelled);
    expect([...pageOne.out.slice(1, -1), ...pageTwo.out.slice(1, -1)].map((l) => l.split(/\s+/)[0])).toEqual([
      ids.pending,
      ids.cancelled,
      ids.failed,
      ids.retried,
    ]);
  });

  it('--json: one object, the next page\'s cursor, never a prompt', async () => {
    const { code, out } = await run(runJobsCli, '--json', '--limit', '2');
    expect(code).toBe(0);
    expect(out).toHaveLength(1);
    expect(out[0]).not.toContain('fox');
    const report = JSON.parse(out[0]!) as JobsReport;
    expect(report.nextBefore).toBe(ids.cancelled);
    expect(report.jobs.map((j) => j.id)).toEqual([ids.pending, ids.cancelled]);
    const all = JSON.parse((await run(runJobsCli, '--json')).out[0]!) as JobsReport;
    expect(all.nextBefore).toBeNull();
    expect(all.jobs.find((j) => j.id === ids.retried)).toEqual({
      id: ids.retried,
      createdMs: T0,
      status: 'completed',
      expired: false,
      model: 'flux',
      backendId: 'gpu0',
      kind: 'generation',
      delivery: 'async',
      n: 2,
      images: 2,
      attempts: 2,
      owner: user,
      durationMs: 7_100,
      submittedBy: 'replica-a',
      ranBy: 'replica-c',
      error: null,
    });
  });

  it('refuses bad options with a reason and the usage', async () => {
    const status = await run(runJobsCli, '--status', 'done');
    expect(status.code).toBe(2);
    expect(status.err[0]).toMatch(/^pixeld jobs: --status: unknown done; one or more of pending, processing, completed, failed, cancelled\n\nUsage: pixeld jobs/);
    expect((await run(runJobsCli, '--limit', '0')).err[0]).toMatch(/^pixeld jobs: --limit: "0" is not a whole number from 1 to 500/);
    const unknown = `job_${'9'.repeat(32)}`;
    const before = await run(runJobsCli, '--before', unknown);
    expect(before.code).toBe(1);
    expect(before.err.at(-1)).toBe(`pixeld jobs: --before: no job ${unknown} in this database (a wrong id, another provider's database, or deleted after jobs.recordRetentionMs)`);
    expect((await run(runJobsCli, '--user', '0xAbCdEf0000000000000000000000000000000000')).err[0]).toMatch(/--user: .* is not a valid address/);
  });

  it('tells what happened to one job: summary, timeline, attempts, images, receipt; the prompt only when asked', async () => {
    const { code, out, err } = await run(runJobCli, ids.retried);
    expect(code, err.join('\n')).toBe(0);
    const text = out.join('\n');
    expect(out[0]).toBe(`${ids.retried}  completed`);
    expect(out).toContain(`  owner        ${user}`);
    expect(out).toContain('  model        flux on backend gpu0, generation, async');
    expect(out).toContain('  asked for    2 × 64x64, quality high, png as b64_json, seed 7, 1000000000000000 wei (0.001 0G) per image');
    expect(out).toContain('  replicas     submitted to replica-a, ran by replica-c');
    expect(out).toContain('  idempotency  an Idempotency-Key was sent');
    expect(out).toContain('  created      2026-12-04 12:00:00 UTC; finished +7.1 s (last attempt ran 3.0 s)');
    expect(out).toContain('  prompt       (hidden; --show-prompt shows it)');
    expect(text).not.toContain('fox');
    const timeline = out.slice(out.indexOf('Timeline (from creation)') + 1, out.indexOf('Attempts') - 1);
    expect(timeline).toEqual([
      '    +0 ms  queued by replica-a',
      '  +100 ms  attempt 1 started on replica-b (lease to +1 min 0 s)',
      '   +2.1 s  attempt 1 failed: upstream_timeout: the backend did not answer in 2 s; retry no earlier than +4.1 s',
      '   +4.1 s  attempt 2 started on replica-c (lease to +1 min 4 s)',
      '   +7.1 s  succeeded on replica-c: 2 image(s), receipt seq 1',
    ]);
    expect(out).toContain('  #1  replica-b  +100 ms → +2.1 s (2.0 s)  retry scheduled: upstream_timeout: the backend did not answer in 2 s');
    expect(out).toContain('  #2  replica-c  +4.1 s → +7.1 s (3.0 s)  succeeded');
    expect(out).toContain(`  0  image/png  64×64  2048 bytes  sha256 ${'b'.repeat(64)}  stored until 2026-12-05 12:00:00 UTC`);
    expect(out).toContain(`  1  image/png  64×64  2048 bytes  sha256 ${'c'.repeat(64)}  stored until 2026-12-05 12:00:00 UTC`);
    expect(out).toContain(`  signed by    ${TEE.address}`);
    expect(out).toContain('  receipt      seq 1, 2 image(s), fee 2000000000000000 wei (0.002 0G), unsettled');
    expect(out.find((l) => l.startsWith('  leaf '))).toMatch(/^ {2}leaf {9}0x[0-9a-f]{64}$/);
    expect(out.at(-1)).toBe('  not settled yet: the next settlement round takes it (pixeld settle runs one now)');

    const shown = await run(runJobCli, ids.retried, '--show-prompt');
    expect(shown.out).toContain('  prompt       "a red fox, for the secret project"');
  });

  it('shows why a job failed or never ran', async () => {
    const failed = await run(runJobCli, ids.failed);
    expect(failed.out).toContain('  error        upstream_error: the backend answered 500');
    expect(failed.out).toContain('  #1  replica-b  +50 ms → +1.0 s (950 ms)  failed: upstream_error: the backend answered 500');
    expect(failed.out).toContain('  not signed (only a completed job is)');
    expect(failed.out.at(-1)).toBe('  nothing to settle');
    const cancelled = await run(runJobCli, ids.cancelled);
    expect(cancelled.out).toContain('  model        sdxl on backend gpu1, edit, async');
    expect(cancelled.out).toContain(`  input        image, image/jpeg 640×480, 50000 bytes, sha256 ${'d'.repeat(64)}`);
    expect(cancelled.out).toContain(`  input        mask, image/png 640×480, 900 bytes, sha256 ${'e'.repeat(64)}`);
    expect(cancelled.out).toContain('  replicas     submitted to (not recorded), ran by (never ran)');
    expect(cancelled.out).toContain('  +1.0 s  cancelled: job_cancelled: cancelled by the caller');
    expect(cancelled.out).toContain('  none: the job never ran');
    expect(cancelled.out).toContain('  none delivered');
  });

  it('--json: the whole story as one object, wei as decimal strings', async () => {
    const { out } = await run(runJobCli, ids.retried, '--json');
    expect(out).toHaveLength(1);
    const report = JSON.parse(out[0]!) as JobReport;
    expect(report.job).not.toHaveProperty('prompt');
    expect(report.job).toMatchObject({ id: ids.retried, idempotencyKey: true, pricePerImageWei: '1000000000000000', startedMs: T0 + 4_100 });
    expect(report.timeline.map((e) => [e.seq, e.type, e.attempt])).toEqual([
      [1, 'queued', 0],
      [2, 'started', 1],
      [3, 'retry_scheduled', 1],
      [4, 'started', 2],
      [5, 'succeeded', 2],
    ]);
    expect(report.attempts).toEqual([
      { attempt: 1, replica: 'replica-b', startedMs: T0 + 100, endedMs: T0 + 2_100, outcome: 'retry_scheduled', error: { code: 'upstream_timeout', message: 'the backend did not answer in 2 s' } },
      { attempt: 2, replica: 'replica-c', startedMs: T0 + 4_100, endedMs: T0 + 7_100, outcome: 'succeeded', error: null },
    ]);
    expect(report.images.map((i) => [i.index, i.sha256, i.stored])).toEqual([
      [0, 'b'.repeat(64), true],
      [1, 'c'.repeat(64), true],
    ]);
    expect(report.receipt).toMatchObject({ seq: '1', feeWei: '2000000000000000', images: 2, state: 'unsettled', leafHash: expect.stringMatching(/^0x[0-9a-f]{64}$/) });
    expect(report.receipt!.leaf).toHaveLength(9);
    expect(report.settlement).toBeNull();
  });

  it('shows the webhook delivery of a job that has one: pending with its last error and next attempt, then delivered', async () => {
    const { jobs } = s.stores;
    const job = newJob({ createdMs: T0 + 40_000, webhook: { url: 'https://hooks.router.example/pixeld?token=s3cret', format: 'therouter' } });
    await jobs.create(job, 0);
    const waiting = await run(runJobCli, job.id);
    expect(waiting.out).toContain("  url          https://hooks.router.example/pixeld (theRouter's poll body)");
    expect(waiting.out).toContain('  delivery     none yet: one is sent when the job ends');

    await jobs.cancel(job.id, T0 + 41_000, T0 + 90_000_000);
    const [claimed] = await jobs.claimWebhookDeliveries(T0 + 41_000, 60_000, 1);
    const retry = { state: 'pending' as const, status: 503, error: 'the receiver answered HTTP 503', nextAttemptMs: T0 + 46_500 };
    await jobs.recordWebhookAttempt(claimed!.id, claimed!.leaseToken, retry, T0 + 41_500);
    const pending = await run(runJobCli, job.id);
    expect(pending.out).toContain(`  delivery     ${claimed!.id}  job.cancelled, queued +1.0 s`);
    expect(pending.out).toContain('  status       pending, 1 attempt(s); last +1.5 s: the receiver answered HTTP 503');
    expect(pending.out).toContain('  next         +6.5 s (2026-12-04 12:00:46 UTC)');
    expect(pending.out.join('\n')).not.toContain('s3cret');

    const [again] = await jobs.claimWebhookDeliveries(T0 + 46_500, 60_000, 1);
    await jobs.recordWebhookAttempt(again!.id, again!.leaseToken, { state: 'delivered', status: 204 }, T0 + 46_600);
    const delivered = await run(runJobCli, job.id);
    expect(delivered.out).toContain('  status       delivered +6.6 s after 2 attempt(s), HTTP 204');
    const report = JSON.parse((await run(runJobCli, job.id, '--json')).out[0]!) as JobReport;
    expect(report.webhook).toEqual({
      url: 'https://hooks.router.example/pixeld',
      format: 'therouter',
      deliveries: [
        {
          id: claimed!.id,
          event: 'job.cancelled',
          state: 'delivered',
          attempts: 2,
          createdMs: T0 + 41_000,
          nextAttemptMs: null,
          lastAttemptMs: T0 + 46_600,
          lastStatus: 204,
          lastError: null,
          finishedMs: T0 + 46_600,
        },
      ],
    });
    // A job without a webhook has no such section.
    expect((await run(runJobCli, ids.failed)).out).not.toContain('Webhook');
    expect((JSON.parse((await run(runJobCli, ids.failed, '--json')).out[0]!) as JobReport).webhook).toBeNull();
  });

  it('says clearly when there is no such job', async () => {
    const unknown = `job_${'0'.repeat(32)}`;
    const missing = await run(runJobCli, unknown);
    expect(missing.code).toBe(1);
    expect(missing.err.at(-1)).toBe(`pixeld job: no job ${unknown} in this database (a wrong id, another provider's database, or deleted after jobs.recordRetentionMs)`);
    const malformed = await run(runJobCli, 'job_123');
    expect(malformed.code).toBe(2);
    expect(malformed.err.at(-1)).toBe('pixeld job: "job_123" is not a job id (job_ and 32 hex digits)');
    const { io, err } = capture();
    expect(await runJobCli([], io)).toBe(2);
    expect(err[0]).toMatch(/^pixeld job: give exactly one job id \(got 0\)\n\nUsage: pixeld job <job id>/);
  });
});

describe('pixeld job on a job a daemon ran and settled on chain', () => {
  let c: BillingChain;
  let d: TestDaemon;
  let user: Wallet;
  let configFile: string;

  beforeAll(async () => {
    c = await setupBillingChain();
    d = await startBillingDaemon(c);
    [user] = (await fundedUsers(c, 1)) as [Wallet];
    configFile = path.join(d.dataDir, 'pixeld.json');
    writeFileSync(configFile, JSON.stringify({ ...daemonConfig(c), dataDir: d.dataDir }));
  }, 120_000);

  afterAll(async () => {
    await d?.close();
    await c?.anvil.stop();
  });

  it('shows the settlement: batch, item status, transaction and block, read while the daemon runs', async () => {
    const jobId = await completedJob(d, c, user, 2);
    const before = capture();
    expect(await runJobCli([jobId, '--config', configFile], before.io), before.err.join('\n')).toBe(0);
    expect(before.out).toContain('  receipt      seq 1, 2 image(s), fee 2000000000000000 wei (0.002 0G), unsettled');

    expect((await d.daemon.settler!.runRound({ reason: 'test' })).outcome).toBe('completed');
    const receipt = (await d.daemon.billing.getReceipt(jobId))!;
    const mined = (await c.anvil.provider.getTransactionReceipt(receipt.settledTx!))!;

    const { io, out, err } = capture();
    expect(await runJobCli([jobId, '--config', configFile], io), err.join('\n')).toBe(0);
    expect(out).toContain(`  owner        ${user.address}`);
    expect(out).toContain('  model        ref on backend reference, generation, sync');
    expect(out.some((l) => /^ +\+[\d.]+ m?s {2}succeeded on .+: 2 image\(s\), receipt seq 1$/.test(l)), out.join('\n')).toBe(true);
    expect(out).toContain('  receipt      seq 1, 2 image(s), fee 2000000000000000 wei (0.002 0G), settled');
    expect(out).toContain(`  batch        ${receipt.batchId} (confirmed), item SUCCESS`);
    expect(out).toContain(`  transaction  ${receipt.settledTx} in block ${mined.blockNumber}`);

    const json = capture();
    await runJobCli([jobId, '--config', configFile, '--json'], json.io);
    expect((JSON.parse(json.out[0]!) as JobReport).settlement).toMatchObject({
      batchId: receipt.batchId,
      batchState: 'confirmed',
      settledTx: receipt.settledTx,
      block: mined.blockNumber,
      itemStatus: 'SUCCESS',
    });

    const listed = capture();
    expect(await runJobsCli(['--user', user.address.toLowerCase(), '--config', configFile], listed.io)).toBe(0);
    expect(listed.out.slice(1, -1).map((l) => l.split(/\s+/)[0])).toEqual([jobId]);
  });
});
