import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeOpenAIServer, type FakeOpenAIServer } from '../fakes/openai-compatible-server.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { Clients, newLogicalJob, type LogicalJob } from './harness/clients.js';
import { recordFigures } from './harness/figures.js';
import { checkLedger, readLedger } from './harness/ledger.js';
import { MODE, rng, SEED, SIZES, sleep } from './harness/mode.js';
import { startTcpSwitch, type TcpSwitch } from './harness/tcp-switch.js';

/**
 * The backend misbehaving under a priced model: down (connection refused, through a TCP switch in front of
 * the fake OpenAI-compatible server), dying mid-answer, hanging past the attempt deadline, answering
 * garbage bytes or broken JSON, returning fewer images than asked, answering 5xx. Each job must end
 * completed or failed with a reason; a failed job bills nothing; a short one bills exactly what it
 * delivered; the daemon keeps serving throughout. First each fault once, by script; then a random mix.
 */

const PRICE = 1_000_000n;
const ATTEMPT_TIMEOUT_MS = 800;

let fake: FakeOpenAIServer;
let gate: TcpSwitch;
let t: TestDaemon;
let clients: Clients;
const jobs: LogicalJob[] = [];
const injected: Record<Fault, number> = { none: 0, down: 0, 'down-briefly': 0, 'mid-response': 0, hang: 0, garbage: 0, 'bad-json': 0, short: 0, '5xx-once': 0, '5xx-always': 0 };
let random: () => number;
/** Faults armed whose effect the fake's record does not show: each would be a test that proved nothing. */
const notObserved: string[] = [];

type Fault = 'none' | 'down' | 'down-briefly' | 'mid-response' | 'hang' | 'garbage' | 'bad-json' | 'short' | '5xx-once' | '5xx-always';

beforeAll(async () => {
  fake = await startFakeOpenAIServer({ flavor: 'openai' });
  gate = await startTcpSwitch(Number(new URL(fake.origin).port));
  t = await startTestDaemon({
    config: {
      jobs: { attemptTimeoutMs: ATTEMPT_TIMEOUT_MS, maxAttempts: 4, retryBackoffMs: 100 },
      backends: [{ id: 'gpu', type: 'openai', baseUrl: `http://127.0.0.1:${gate.port}/v1`, concurrency: 2, maxImagesPerCall: 4, connectTimeoutMs: 500 }],
      models: [{ id: 'img', backend: 'gpu', capabilities: ['generation'], sizes: ['64x64'], maxN: 4, pricePerImageWei: PRICE.toString() }],
    },
  });
  clients = new Clients({ url: () => t.url, signer: t.daemon.tee.address, pricePerImageWei: PRICE, model: 'img', waitSeconds: 10 });
  random = rng(SEED ^ 0xfa17);
}, 60_000);

afterAll(async () => {
  await t?.close();
  await gate?.close();
  await fake?.close();
});

/** Arms the fault, runs one job through a client to its end, disarms. */
async function runWith(fault: Fault, wanted?: number): Promise<LogicalJob> {
  const job = newLogicalJob(random, 'anonymous', undefined, 'img', 0);
  // A short answer needs more than one image asked for to be short.
  const n = wanted ?? (fault === 'short' ? 4 : undefined);
  if (n !== undefined) {
    job.n = n;
    job.body = JSON.stringify({ ...JSON.parse(job.body), n });
  }
  jobs.push(job);
  injected[fault] += 1;
  const seen = fake.requests.length;
  fake.resetBehaviour();
  switch (fault) {
    case 'down':
      await gate.down();
      break;
    case 'down-briefly':
      await gate.down();
      // Back before the retries run out: the job completes on a later attempt.
      setTimeout(() => void gate.up(), 150);
      break;
    case 'mid-response':
      fake.setBehaviour({ destroyMidResponse: true });
      // Healthy again once it has cut one answer off: the retry then succeeds.
      void fake.nextDisconnect().then(() => fake.resetBehaviour());
      break;
    case 'hang':
      fake.setBehaviour({ hang: true });
      break;
    case 'garbage':
      fake.setBehaviour({ garbageB64: true });
      break;
    case 'bad-json':
      fake.setBehaviour({ invalidJson: true });
      break;
    case 'short':
      fake.setBehaviour({ maxImagesReturned: 1 });
      break;
    case '5xx-once':
      fake.setNextFailures(1, { status: 503, headers: { 'retry-after': '0' } });
      break;
    case '5xx-always':
      fake.setNextFailures(10, { status: 500 });
      break;
    case 'none':
      break;
  }
  await clients.run(job);
  fake.resetBehaviour();
  await gate.up();
  // The fault really happened: the answers the daemon got show it.
  const calls = fake.requests.slice(seen);
  const cut = calls.some((r) => r.disconnected);
  const seenBy: Partial<Record<Fault, boolean>> = {
    'mid-response': cut && calls.length >= 2,
    hang: cut,
    '5xx-once': calls.length >= 2,
    '5xx-always': job.outcome?.status === 'failed',
    garbage: job.outcome?.status === 'failed',
    'bad-json': job.outcome?.status === 'failed',
    short: job.outcome?.status === 'completed' && job.outcome.imageSha256.length < job.n,
  };
  if (seenBy[fault] === false) notObserved.push(`${fault}: ${calls.length} calls, outcome ${JSON.stringify(job.outcome).slice(0, 120)}`);
  return job;
}

const failedWith = (job: LogicalJob) => (job.outcome?.status === 'failed' ? job.outcome.errorCode : undefined);
const imagesOf = (job: LogicalJob) => (job.outcome?.status === 'completed' ? job.outcome.imageSha256.length : -1);

describe(`backend faults under a priced model (${MODE})`, () => {
  it('a backend that stays down fails the job with upstream_error after the retries; one back in time completes it', async () => {
    const down = await runWith('down');
    expect(failedWith(down)).toBe('upstream_error');
    if (down.outcome?.status === 'failed') expect(down.outcome.errorMessage).toMatch(/unavailable/);
    const brief = await runWith('down-briefly');
    expect(imagesOf(brief)).toBe(brief.n);
  });

  it('a backend that dies mid-answer is retried; one answering 503 once is retried; one answering 500 throughout fails the job', async () => {
    expect(imagesOf(await runWith('mid-response'))).toBeGreaterThan(0);
    expect(imagesOf(await runWith('5xx-once'))).toBeGreaterThan(0);
    expect(failedWith(await runWith('5xx-always'))).toBe('upstream_error');
  });

  it('a backend hanging past the deadline fails the job with upstream_timeout, and the daemon hangs up on it', async () => {
    const started = Date.now();
    const job = await runWith('hang');
    expect(failedWith(job)).toBe('upstream_timeout');
    expect(Date.now() - started).toBeLessThan(ATTEMPT_TIMEOUT_MS + 5_000);
    const deadline = Date.now() + 2_000;
    while (!fake.requests.at(-1)!.disconnected && Date.now() < deadline) await sleep(10);
    expect(fake.requests.at(-1)!.disconnected).toBe(true);
  });

  it('garbage bytes and broken JSON fail the job (upstream_error) and bill nothing', async () => {
    expect(failedWith(await runWith('garbage'))).toBe('upstream_error');
    expect(failedWith(await runWith('bad-json'))).toBe('upstream_error');
  });

  it('a backend returning fewer images than asked: the job delivers what top-ups got, and the receipt bills exactly those', async () => {
    const job = await runWith('short', 4);
    // One image per call, one call plus maxTopUpCalls (2) top-ups.
    expect(imagesOf(job)).toBe(3);
  });

  it(`then ${SIZES.faultRounds} faults at random: every job ends with images or a reason, books exact, daemon serving`, async () => {
    const faults: Fault[] = ['none', 'down', 'down-briefly', 'mid-response', 'hang', 'garbage', 'bad-json', 'short', '5xx-once', '5xx-always'];
    for (let i = 0; i < SIZES.faultRounds; i += 1) {
      const job = await runWith(faults[Math.floor(random() * faults.length)]!);
      expect(job.outcome, `round ${i}`).toBeDefined();
    }
    expect((await fetch(`${t.url}/healthz`)).status).toBe(200);
    // Still serving normally after all of it.
    expect(imagesOf(await runWith('none', 2))).toBe(2);

    const acknowledged = new Map(jobs.filter((j) => j.jobId).map((j) => [j.key, j.jobId!]));
    const ledger = readLedger(t.dataDir);
    const check = checkLedger(ledger, { acknowledged, keysSent: new Set(jobs.map((j) => j.key)), finished: true });
    const internalErrors = t.logs.filter((l) => l.level === 'error').map((l) => String(l.message));
    recordFigures({
      scenario: 'backend-faults',
      mode: MODE,
      seed: SEED,
      values: {
        jobs: jobs.length,
        backendDown: injected.down + injected['down-briefly'],
        backendDiedMidResponse: injected['mid-response'],
        backendHung: injected.hang,
        backendGarbage: injected.garbage,
        backendBadJson: injected['bad-json'],
        backendShort: injected.short,
        backend5xx: injected['5xx-once'] + injected['5xx-always'],
        completed: check.completed,
        failedWithReason: check.failed,
        receipts: ledger.receipts.length,
        imagesDelivered: check.imagesDelivered,
        receiptImages: check.receiptImages,
        jobsLost: check.lost.length,
        jobsDuplicated: check.duplicated.length,
        jobsUnfinished: check.unfinished.length,
        receiptsWrong: check.receiptsWrong.length + clients.stats.receiptsWrong.length,
        internalErrors: internalErrors.length,
        daemonDown: 0,
      },
    });
    expect(clients.stats.unexpected).toEqual([]);
    expect(clients.stats.receiptsWrong).toEqual([]);
    expect(check.lost).toEqual([]);
    expect(check.duplicated).toEqual([]);
    expect(check.unfinished).toEqual([]);
    expect(check.failedWithoutReason).toEqual([]);
    expect(check.receiptsWrong).toEqual([]);
    expect(check.receiptImages).toBe(check.imagesDelivered);
    expect(internalErrors).toEqual([]);
    expect(notObserved).toEqual([]);
  }, 300_000);
});
