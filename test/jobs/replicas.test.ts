import { createHash } from 'node:crypto';
import { Wallet } from 'ethers';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChildDaemon } from '../reliability/harness/child-daemon.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';
import { completionLogs, replicaSet, type ReplicaSet } from '../helpers/replicas.js';
import {
  ADMIN_TOKEN,
  PRICE,
  b64Image,
  counters,
  expectOneReceiptEach,
  expectReceiptNumbersContiguous,
  jobRows,
  PNG_MAGIC,
  poll,
  pollUntilEnd,
  replicaConfig,
  showLogsOnFailure,
  submit,
} from './replica-fixture.js';

/**
 * Replicas that share nothing but PostgreSQL (issue 14), as real `pixeld serve` processes: three daemons
 * on one database, each with its own data dir, port and replica name, all signing with one TEE key. r2
 * alone serves a model `b-only`, on a backend the others do not have. A replica SIGKILLed mid-run is in
 * replica-crash.test.ts (it waits out a lease).
 */

const B_ONLY_LATENCY_MS = 1_200;

let db: TestDatabase;
let sql: pg.Client;
let set: ReplicaSet;
let r1: ChildDaemon;
let r2: ChildDaemon;
let r3: ChildDaemon;

beforeAll(async () => {
  db = await createTestDatabase();
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  set = replicaSet({ databaseUrl: db.url, env: { PIXELD_TEST_ADMIN_TOKEN: ADMIN_TOKEN } });
  [r1, r2, r3] = await Promise.all([
    set.start('r1', replicaConfig()),
    set.start('r2', replicaConfig({
      backends: [{ id: 'b-gpu', type: 'reference', concurrency: 2, latencyMsPerImage: B_ONLY_LATENCY_MS }],
      models: [{ id: 'b-only', backend: 'b-gpu', capabilities: ['generation'], sizes: ['64x64'], maxN: 1, pricePerImageWei: PRICE.toString() }],
    })),
    set.start('r3', replicaConfig()),
  ]);
}, 60_000);

afterAll(async () => {
  await set?.close();
  await sql?.end();
  await db?.drop();
});

describe('replicas sharing one PostgreSQL database (child processes)', () => {
  it('1,000 async jobs submitted round-robin to three replicas, each polled from another, all complete exactly once', async () => {
    showLogsOnFailure(set);
    const replicas = [r1, r2, r3];
    const before = await Promise.all(replicas.map(counters));
    const JOBS = 1_000;
    const CLIENTS = 48;
    const jobs: Array<{ id: string; submittedTo: string; polledOn: string; bytes: Buffer }> = [];
    let next = 0;
    const client = async () => {
      for (let i = next++; i < JOBS; i = next++) {
        const to = replicas[i % 3]!;
        const on = replicas[(i + 1) % 3]!;
        const { status, jobId } = await submit(to, { prompt: `round robin ${i}` });
        expect(status).toBe(202);
        const done = await pollUntilEnd(on, jobId);
        jobs.push({ id: jobId, submittedTo: to.name, polledOn: on.name, bytes: b64Image(done) });
      }
    };
    await Promise.all(Array.from({ length: CLIENTS }, client));
    expect(jobs).toHaveLength(JOBS);
    const ids = jobs.map((j) => j.id);
    expect(new Set(ids).size).toBe(JOBS);

    // The database: each job completed once, on its first attempt, accepted by the replica it was sent to.
    const rows = await jobRows(sql, ids);
    expect(rows.size).toBe(JOBS);
    const ranBy = new Map<string, number>();
    for (const job of jobs) {
      const row = rows.get(job.id)!;
      expect({ status: row.status, attempts: row.attempts, submitted_by: row.submitted_by }, job.id).toEqual({
        status: 'completed',
        attempts: 1,
        submitted_by: job.submittedTo,
      });
      expect(['r1', 'r2', 'r3'], job.id).toContain(row.ran_by);
      ranBy.set(row.ran_by!, (ranBy.get(row.ran_by!) ?? 0) + 1);
    }
    // Spread over the replicas: each one ran a real share (a third would be even; a tenth is the floor).
    for (const name of ['r1', 'r2', 'r3']) expect(ranBy.get(name) ?? 0, `jobs run by ${name}: ${JSON.stringify([...ranBy])}`).toBeGreaterThanOrEqual(JOBS / 10);

    // The replicas' own counters: 1,000 attempts and completions between them, each its share of ran_by.
    const after = await Promise.all(replicas.map(counters));
    const completedBy = after.map((a, i) => a.jobsCompleted - before[i]!.jobsCompleted);
    const startedBy = after.map((a, i) => a.attemptsStarted - before[i]!.attemptsStarted);
    expect(completedBy).toEqual(replicas.map((r) => ranBy.get(r.name) ?? 0));
    expect(startedBy.reduce((a, b) => a + b, 0)).toBe(JOBS);

    // Each job's completion logged by one replica only — the one the database says ran it.
    const logged = await completionLogs(replicas, ids);
    for (const id of ids) expect(logged.get(id), id).toEqual([rows.get(id)!.ran_by]);

    await expectOneReceiptEach(sql, ids);
    await expectReceiptNumbersContiguous(sql);
  }, 80_000);

  it('the same Idempotency-Key sent to three replicas at once gives one job', async () => {
    showLogsOnFailure(set);
    const KEYS = 15;
    for (let k = 0; k < KEYS; k += 1) {
      const key = `replicas-idem-${k}`;
      const body = { prompt: `idempotent ${k}` };
      const answers = await Promise.all([r1, r2, r3].map((r) => submit(r, body, { 'idempotency-key': key })));
      const ids = new Set(answers.map((a) => a.jobId));
      expect(ids.size, `key ${key}: ${JSON.stringify(answers.map((a) => [a.status, a.jobId]))}`).toBe(1);
      // One of them created it (202); the others were given the same job (200).
      expect(answers.map((a) => a.status).sort()).toEqual([200, 200, 202]);
      const { rows } = await sql.query('SELECT id FROM jobs WHERE idempotency_key = $1', [key]);
      expect(rows).toEqual([{ id: [...ids][0] }]);
    }
    // Finished, the key still names the job on every replica.
    const { jobId } = await submit(r3, { prompt: 'idempotent 0' }, { 'idempotency-key': 'replicas-idem-0' });
    await pollUntilEnd(r1, jobId);
    for (const r of [r1, r2, r3]) {
      const replay = await submit(r, { prompt: 'idempotent 0' }, { 'idempotency-key': 'replicas-idem-0' });
      expect([replay.status, replay.jobId]).toEqual([200, jobId]);
    }
  });

  it('a result is readable from every replica: b64_json in polls, url files, and the signature, all the same bytes', async () => {
    showLogsOnFailure(set);
    const b64Job = await submit(r1, { prompt: 'bytes everywhere', response_format: 'b64_json' });
    const urlJob = await submit(r1, { prompt: 'links everywhere', response_format: 'url' });
    const fromR1 = b64Image(await pollUntilEnd(r1, b64Job.jobId));
    for (const r of [r2, r3]) expect(b64Image(await pollUntilEnd(r, b64Job.jobId)).equals(fromR1), r.name).toBe(true);

    const done = await pollUntilEnd(r2, urlJob.jobId);
    expect(done.status).toBe('completed');
    const link = new URL(done.data?.data[0]?.url ?? 'http://missing.invalid/');
    const copies: Buffer[] = [];
    for (const r of [r1, r2, r3]) {
      // The link names the replica that accepted the job; behind one public URL any replica may answer it.
      const res = await fetch(new URL(link.pathname, r.url));
      expect(res.status, `${r.name} GET ${link.pathname}`).toBe(200);
      copies.push(Buffer.from(await res.arrayBuffer()));
    }
    expect(copies[0]!.subarray(0, 8)).toEqual(PNG_MAGIC);
    for (const copy of copies) expect(copy.equals(copies[0]!)).toBe(true);

    // The signature names these bytes and the provider's one key, whichever replica is asked.
    for (const [jobId, bytes] of [[b64Job.jobId, fromR1], [urlJob.jobId, copies[0]!]] as const) {
      for (const r of [r1, r2, r3]) {
        const res = await fetch(`${r.url}/v1/proxy/signature/${jobId}`);
        expect(res.status).toBe(200);
        const signature = (await res.json()) as { signing_address: string; receipt: { image_sha256: string[] } };
        expect(signature.signing_address).toBe(set.teeAddress);
        expect(signature.receipt.image_sha256).toEqual([createHash('sha256').update(bytes).digest('hex')]);
      }
    }
  });

  it('a long-poll on one replica returns within a second of another replica completing the job', async () => {
    showLogsOnFailure(set);
    // b-only runs on r2 alone (the others have no such backend); r1 and r3 long-poll it.
    const delays: number[] = [];
    for (let i = 0; i < 4; i += 1) {
      const { jobId } = await submit(r2, { model: 'b-only', prompt: `wake me ${i}` });
      const pollStarted = Date.now();
      const answered = await Promise.all(
        [r1, r3].map(async (r) => {
          const body = await poll(r, jobId, 20);
          return { body, at: Date.now() };
        }),
      );
      const row = (await jobRows(sql, [jobId])).get(jobId)!;
      expect({ status: row.status, ran_by: row.ran_by }).toEqual({ status: 'completed', ran_by: 'r2' });
      const finishedMs = Number(row.finished_ms);
      // The polls began before the job ended: they waited for it.
      expect(pollStarted).toBeLessThan(finishedMs);
      for (const { body, at } of answered) {
        expect(body.status).toBe('completed');
        delays.push(at - finishedMs);
      }
    }
    // Every wake within the second…
    expect(Math.max(...delays), `delays ${JSON.stringify(delays)} ms`).toBeLessThan(1_000);
    // …and woken by the completion itself: a re-read of the job once a second would wait ~500 ms on the median.
    const sorted = [...delays].sort((a, b) => a - b);
    expect(sorted[Math.floor(sorted.length / 2)], `delays ${JSON.stringify(delays)} ms`).toBeLessThan(300);
  });

  it('a replica signing with another key is refused at start while replicas with the provider key are live', async () => {
    showLogsOnFailure(set);
    const stranger = new Wallet(Wallet.createRandom().privateKey);
    const { exit, output } = await set.runToExit('r-other-key', replicaConfig(), { teeKey: stranger.privateKey });
    expect(exit, output).toEqual({ code: 2, signal: null });
    expect(output).toContain(`signs with ${set.teeAddress} and this one with ${stranger.address}`);
    expect(output).not.toMatch(/pixeld listening/);
    const { rows } = await sql.query('SELECT id FROM replicas WHERE signer <> $1', [set.teeAddress]);
    expect(rows).toEqual([]);
  });
});
