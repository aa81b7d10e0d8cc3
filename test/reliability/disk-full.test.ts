import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Wallet } from 'ethers';
import sharp from 'sharp';
import { DEV_KEY_FILE } from '../../src/tee/dev-key.js';
import { afterAll, describe, expect, it } from 'vitest';
import { killAllChildren, startChild, type ChildDaemon } from './harness/child-daemon.js';
import { Clients, newLogicalJob, type LogicalJob } from './harness/clients.js';
import { recordFigures } from './harness/figures.js';
import { checkLedger, readLedger } from './harness/ledger.js';
import { MODE, rng, SEED, sleep } from './harness/mode.js';
import { makeSmallDisk, type SmallDisk } from './harness/small-disk.js';

/**
 * The data dir filling up, on a small filesystem the test makes (harness/small-disk.ts): `pixeld serve`
 * (a child process) must refuse new work with 507 in the error shape — sync, async and multipart alike —
 * while it is nearly full, keep running the jobs it accepted, survive the disk being filled to the last
 * byte under running jobs (no crash, no 5xx, no job lost or left processing), and take work again as soon
 * as space returns.
 */

const SIZE_MIB = 64;
const PRICE = 1_000n;

let disk: SmallDisk | undefined;

afterAll(async () => {
  await killAllChildren();
  disk?.close();
});

interface Answer {
  status: number;
  body: any;
  headers: Headers;
}

async function post(url: string, path: string, body: BodyInit, contentType?: string, idempotencyKey?: string): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (contentType) headers['content-type'] = contentType;
  if (idempotencyKey) headers['idempotency-key'] = idempotencyKey;
  const res = await fetch(`${url}${path}`, { method: 'POST', headers, body });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = text;
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

function expectStorageRefusal(a: Answer): void {
  expect({ status: a.status, code: a.body?.error?.code }).toEqual({ status: 507, code: 'insufficient_storage' });
  expect(Object.keys(a.body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(a.headers.get('retry-after')).toBe('30');
  expect(a.headers.get('x-should-retry')).toBe('true');
}

describe(`the data dir filling up (${MODE})`, () => {
  it('refuses new work with 507 while nearly full, survives a full disk under running jobs, recovers when space returns', async () => {
    disk = makeSmallDisk(SIZE_MIB);
    const d = disk;
    const child: ChildDaemon = await startChild({
      name: `on a ${SIZE_MIB} MiB ${d.method}`,
      dataDir: d.dataDir,
      nodeArgs: d.nodeArgs,
      env: d.env,
      config: {
        jobs: { retryBackoffMs: 200, maxAttempts: 5 },
        // The default 64 MiB reserve is the whole of this disk: keep 4 MiB, as a provider on a small disk would.
        limits: { minFreeDiskBytes: 4 * 1024 * 1024 },
        backends: [{ id: 'reference', type: 'reference', concurrency: 2, latencyMsPerImage: 150, maxQueuedJobs: 1_000 }],
        models: [{ id: 'ref', backend: 'reference', capabilities: ['generation', 'edit'], sizes: ['64x64'], maxN: 4, pricePerImageWei: PRICE.toString() }],
      },
    });
    const random = rng(SEED ^ 0xd15c);
    // The daemon made its dev signing key at start: receipts must be signed by it.
    const signer = new Wallet(readFileSync(path.join(d.dataDir, DEV_KEY_FILE), 'utf8').trim()).address;
    const clients = new Clients({ url: () => child.url, signer, pricePerImageWei: PRICE, model: 'ref', waitSeconds: 10 });
    const jobs: LogicalJob[] = [];
    const submitOnly = async (count: number): Promise<LogicalJob[]> => {
      const batch = Array.from({ length: count }, () => newLogicalJob(random, 'anonymous', undefined, 'ref', 0));
      for (const job of batch) {
        const a = await post(child.url, '/v1/async/images/generations', job.body, 'application/json', job.key);
        if (a.status === 202) {
          job.jobId = a.body.jobId;
          jobs.push(job);
        } else throw new Error(`submit answered ${a.status}: ${JSON.stringify(a.body)}`);
      }
      return batch;
    };
    const png = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#336699' } }).png().toBuffer();
    const form = () => {
      const f = new FormData();
      f.append('prompt', 'edit while full');
      f.append('image', new Blob([new Uint8Array(png)], { type: 'image/png' }), 'a.png');
      return f;
    };
    let refused = 0;
    const expectRefusedEverywhere = async () => {
      expectStorageRefusal(await post(child.url, '/v1/async/images/generations', JSON.stringify({ prompt: 'p' }), 'application/json'));
      expectStorageRefusal(await post(child.url, '/v1/images/generations', JSON.stringify({ prompt: 'p' }), 'application/json'));
      expectStorageRefusal(await post(child.url, '/v1/images/edits', form()));
      refused += 3;
    };

    // 1. Work accepted while there is room, then the disk fills to below the reserve kept for it.
    const early = await submitOnly(12);
    const leftAfterFirstFill = d.fill(1024 * 1024);
    expect(leftAfterFirstFill).toBeLessThanOrEqual(1024 * 1024);
    await expectRefusedEverywhere();
    const metrics = (await (await fetch(`${child.url}/healthz`)).json()) as { status: string };
    expect(metrics.status).toBe('ok');

    // 2. Filled to the last byte while jobs run: writes of images and job rows fail under them.
    d.release();
    const underFull = await submitOnly(10);
    const leftAfterSecondFill = d.fill(0);
    await expectRefusedEverywhere();
    await sleep(2_500);
    expect(child.running, child.tail()).toBe(true);
    expect((await fetch(`${child.url}/healthz`)).status).toBe(200);
    // Reads still answer while nothing can be written.
    const poll = await fetch(`${child.url}/v1/async/jobs/${early[0]!.jobId}`);
    expect(poll.status).toBe(200);

    // 3. Space returns: everything accepted ends, and new work is taken again.
    d.release();
    await sleep(300);
    const after = await submitOnly(6);
    expect(after.every((j) => j.jobId)).toBe(true);
    for (const job of jobs) await clients.run(job);

    expect(child.running, child.tail()).toBe(true);
    const exit = await child.kill('SIGTERM');
    expect(exit, child.tail()).toEqual({ code: 0, signal: null });
    const acknowledged = new Map(jobs.map((j) => [j.key, j.jobId!]));
    const ledger = readLedger(d.dataDir);
    const check = checkLedger(ledger, { acknowledged, keysSent: new Set(jobs.map((j) => j.key)), finished: true });
    const serverErrors = child.logLines().filter((l) => l.message === 'unhandled error').length;
    const storageFailures = ledger.jobs.filter((j) => j.errorCode === 'insufficient_storage').length;
    // What the full disk did to running work, from the daemon's log: writes that failed and were retried.
    const log = child.logLines();
    const storageRetries = log.filter((l) => String(l.message).startsWith('attempt failed; will retry') && l.code === 'insufficient_storage').length;
    const recordRetries = log.filter((l) => l.message === 'could not record the attempt; trying again').length;
    const claimFailures = log.filter((l) => l.message === 'could not claim a job').length;
    recordFigures({
      scenario: 'disk-full',
      mode: MODE,
      seed: SEED,
      values: {
        method: d.method,
        sizeMiB: SIZE_MIB,
        fills: 2,
        freeAfterFirstFillKiB: Math.round(leftAfterFirstFill / 1024),
        freeAfterSecondFillKiB: Math.round(leftAfterSecondFill / 1024),
        refused,
        jobs: jobs.length,
        completed: check.completed,
        failedWithReason: check.failed,
        failedForStorage: storageFailures,
        imageWritesRetried: storageRetries,
        jobRowWritesRetried: recordRetries,
        claimsRefusedByFullDisk: claimFailures,
        receipts: ledger.receipts.length,
        jobsLost: check.lost.length,
        jobsDuplicated: check.duplicated.length,
        jobsUnfinished: check.unfinished.length,
        receiptsWrong: check.receiptsWrong.length,
        serverErrors,
        daemonDown: 0,
      },
    });
    expect(clients.stats.unexpected).toEqual([]);
    expect(check.lost).toEqual([]);
    expect(check.duplicated).toEqual([]);
    expect(check.unfinished).toEqual([]);
    expect(check.failedWithoutReason).toEqual([]);
    expect(check.receiptsWrong).toEqual([]);
    // Failures, if any, say the disk was full; the work accepted after space returned all completed.
    expect(ledger.jobs.filter((j) => j.status === 'failed' && j.errorCode !== 'insufficient_storage')).toEqual([]);
    expect(after.every((j) => j.outcome?.status === 'completed')).toBe(true);
    expect([...early, ...underFull].every((j) => j.outcome !== undefined)).toBe(true);
    expect(serverErrors).toBe(0);
    // The full disk really hit running jobs (on a real filesystem; injection reaches image writes only).
    expect(storageRetries + recordRetries + claimFailures).toBeGreaterThan(0);
  }, 300_000);
});
