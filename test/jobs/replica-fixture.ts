import { createHash } from 'node:crypto';
import type pg from 'pg';
import { expect, onTestFailed } from 'vitest';
import type { ChildDaemon } from '../reliability/harness/child-daemon.js';
import type { ReplicaSet } from '../helpers/replicas.js';

/**
 * What the replica tests share (test/jobs/replicas.test.ts, replica-crash.test.ts): the replicas' config — a
 * router with an API key paying for model `ref` (every completion writes a numbered receipt) and a slow
 * model — and the calls and database reads the tests make. Only HTTP, the processes' logs and the
 * database are looked at, never a daemon's memory.
 */

export const API_KEY = 'sk-replicas-router';
export const OWNER = 'router-replicas';
export const ADMIN_TOKEN = 'adm-replicas-0123456789abcdef';
export const PRICE = 1_000_000_000_000n;
export const auth = { authorization: `Bearer ${API_KEY}` };

/** The reference backend's time per image: fixed, so the load is the daemons', not the renderer's. */
export const REF_LATENCY_MS = 25;
export const SLOW_LATENCY_MS = 1_500;

export interface ReplicaExtras {
  backends?: object[];
  models?: object[];
  jobs?: object;
  slow?: { concurrency: number; latencyMsPerImage: number };
}

export function replicaConfig(extra: ReplicaExtras = {}): Record<string, unknown> {
  return {
    log: { level: 'info' },
    auth: { mode: 'api-key', apiKeys: [{ owner: OWNER, sha256: createHash('sha256').update(API_KEY).digest('hex') }] },
    admin: { tokenEnv: 'PIXELD_TEST_ADMIN_TOKEN' },
    rateLimits: { requestsPerMinute: 1_000_000, imagesPerMinute: 1_000_000 },
    // The sweeper re-queues expired leases: often, so a dead replica's jobs are picked up soon after.
    jobs: { sweepIntervalMs: 200, retryBackoffMs: 50, ...(extra.jobs ?? {}) },
    backends: [
      { id: 'gpu', type: 'reference', concurrency: 4, latencyMsPerImage: REF_LATENCY_MS, maxQueuedJobs: 10_000 },
      { id: 'slow', type: 'reference', concurrency: 1, latencyMsPerImage: SLOW_LATENCY_MS, ...(extra.slow ?? {}) },
      ...(extra.backends ?? []),
    ],
    models: [
      { id: 'ref', backend: 'gpu', capabilities: ['generation'], sizes: ['64x64'], maxN: 2, maxInFlight: 10_000, pricePerImageWei: PRICE.toString() },
      { id: 'slow', backend: 'slow', capabilities: ['generation'], sizes: ['64x64'], maxN: 1, pricePerImageWei: PRICE.toString() },
      ...(extra.models ?? []),
    ],
  };
}

/** On failure, the last lines of every replica. */
export function showLogsOnFailure(set: ReplicaSet): void {
  onTestFailed(() => {
    for (const replica of set.replicas.values()) console.error(replica.tail(60));
  });
}

export interface Submitted {
  status: number;
  jobId: string;
  body: Record<string, any>;
}

export async function submit(r: ChildDaemon, body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<Submitted> {
  const res = await fetch(`${r.url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...auth, ...headers },
    body: JSON.stringify({ model: 'ref', size: '64x64', n: 1, ...body }),
  });
  const text = await res.text();
  if (res.status !== 202 && res.status !== 200) throw new Error(`submit to ${r.name} answered ${res.status}: ${text}`);
  const parsed = JSON.parse(text) as Record<string, any>;
  return { status: res.status, jobId: parsed.jobId as string, body: parsed };
}

export interface PollBody {
  jobId: string;
  status: 'pending' | 'processing' | 'completed' | 'failed';
  data?: { data: Array<{ b64_json?: string; url?: string }> };
  [key: string]: unknown;
}

export async function poll(r: ChildDaemon, id: string, waitSeconds = 0): Promise<PollBody> {
  const res = await fetch(`${r.url}/v1/async/jobs/${id}${waitSeconds > 0 ? `?wait=${waitSeconds}` : ''}`, { headers: auth });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`poll of ${id} on ${r.name} answered ${res.status}: ${text.slice(0, 500)}`);
  return JSON.parse(text) as PollBody;
}

/** Long-polls `r` until the job has completed or failed. */
export async function pollUntilEnd(r: ChildDaemon, id: string, timeoutMs = 30_000): Promise<PollBody> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const body = await poll(r, id, 10);
    if (body.status === 'completed' || body.status === 'failed') return body;
    if (Date.now() > deadline) throw new Error(`job ${id} still ${body.status} on ${r.name} after ${timeoutMs} ms`);
  }
}

export const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** The one image of a completed poll, as bytes. */
export function b64Image(body: PollBody): Buffer {
  expect(body.status, JSON.stringify(body).slice(0, 300)).toBe('completed');
  const images = body.data?.data ?? [];
  expect(images).toHaveLength(1);
  const bytes = Buffer.from(images[0]!.b64_json ?? '', 'base64');
  expect(bytes.subarray(0, 8)).toEqual(PNG_MAGIC);
  return bytes;
}

export interface RunnerCounters {
  attemptsStarted: number;
  jobsCompleted: number;
}

export async function counters(r: ChildDaemon): Promise<RunnerCounters> {
  const res = await fetch(`${r.url}/v1/admin/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  expect(res.status).toBe(200);
  return ((await res.json()) as { runner: RunnerCounters }).runner;
}

export interface JobRow {
  id: string;
  status: string;
  attempts: number;
  submitted_by: string | null;
  ran_by: string | null;
  started_ms: string | null;
  finished_ms: string | null;
  lease_expires_ms: string | null;
}

export async function jobRows(sql: pg.Client, ids: string[]): Promise<Map<string, JobRow>> {
  const { rows } = await sql.query<JobRow>(
    'SELECT id, status, attempts, submitted_by, ran_by, started_ms, finished_ms, lease_expires_ms FROM jobs WHERE id = ANY($1)',
    [ids],
  );
  return new Map(rows.map((r) => [r.id, r]));
}

/**
 * Every receipt of the owner numbered once: 1..count with no gap and no number twice (a job completed twice
 * would take a second number, or — the receipts' key being the job id — fail its completion loudly).
 */
export async function expectReceiptNumbersContiguous(sql: pg.Client): Promise<void> {
  const { rows } = await sql.query<{ n: string; distinct_seq: string; min: string | null; max: string | null }>(
    'SELECT count(*)::text AS n, count(DISTINCT seq)::text AS distinct_seq, min(seq)::text AS min, max(seq)::text AS max FROM receipts WHERE owner = $1',
    [OWNER],
  );
  const { n, distinct_seq, min, max } = rows[0]!;
  expect({ distinct_seq, min, max }).toEqual({ distinct_seq: n, min: '1', max: n });
}

/** Each job's receipt: exactly one row, numbered, for one image at the model's price. */
export async function expectOneReceiptEach(sql: pg.Client, ids: string[]): Promise<void> {
  const { rows } = await sql.query<{ job_id: string; seq: string | null; images: number; fee: string; state: string }>(
    'SELECT job_id, seq::text AS seq, images, fee_wei::text AS fee, state FROM receipts WHERE job_id = ANY($1)',
    [ids],
  );
  expect(rows).toHaveLength(ids.length);
  for (const row of rows) expect(row, row.job_id).toMatchObject({ images: 1, fee: PRICE.toString(), state: 'offchain', seq: expect.stringMatching(/^\d+$/) });
}
