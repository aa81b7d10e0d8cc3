import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { parseExposition, valueOf, type Exposition } from '../helpers/prometheus.js';

const MODEL = 'ref-model';
const ADMIN_TOKEN = 'metrics-test-admin-token';

function config(access: 'open' | 'admin'): Partial<ConfigInput> {
  return {
    backends: [{ id: 'ref', type: 'reference', concurrency: 1, latencyMsPerImage: 1 } as ConfigInput['backends'][number]],
    models: [{ id: MODEL, backend: 'ref', capabilities: ['generation', 'edit'], sizes: ['64x64'], maxN: 4 }],
    admin: { tokenSha256: createHash('sha256').update(ADMIN_TOKEN).digest('hex') },
    metrics: { access },
  };
}

let daemon: TestDaemon | undefined;
afterEach(async () => {
  await daemon?.close();
  daemon = undefined;
});

async function scrape(url: string, token: string | undefined = ADMIN_TOKEN): Promise<Exposition> {
  const res = await fetch(`${url}/metrics`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parseExposition(await res.text());
}

async function runJob(url: string, n: number): Promise<string> {
  const res = await fetch(`${url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, size: '64x64', prompt: 'a fox', n }),
  });
  expect(res.status).toBe(202);
  const { jobId } = (await res.json()) as { jobId: string };
  for (let i = 0; i < 300; i += 1) {
    const poll = await fetch(`${url}/v1/async/jobs/${jobId}`);
    const body = (await poll.json()) as { status: string };
    if (body.status === 'completed') return jobId;
    if (body.status === 'failed') throw new Error(`job ${jobId} failed`);
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`job ${jobId} never completed`);
}

describe('GET /metrics (Prometheus)', () => {
  it('parses as Prometheus text, and its counters move with the work; no job id in any label', { timeout: 60_000 }, async () => {
    daemon = await startTestDaemon({ config: config('admin') });
    const { url } = daemon;
    const before = await scrape(url);
    const info = before.samples.find((s) => s.name === 'pixeld_info');
    expect(info).toMatchObject({ value: 1, labels: { signer: daemon.daemon.tee.address, tee_mode: 'dev' } });
    expect(info!.labels.version).toMatch(/\d+\.\d+\.\d+/);
    expect(info!.labels.replica).toMatch(/.+/);
    expect(before.types.get('pixeld_process_resident_memory_bytes') ?? before.types.get('pixeld_nodejs_heap_size_used_bytes')).toBeDefined();
    expect(before.types.get('pixeld_http_request_duration_seconds')).toBe('histogram');
    expect(before.types.get('pixeld_backend_attempt_duration_seconds')).toBe('histogram');
    expect(valueOf(before, 'pixeld_images_delivered_total')).toBe(0);
    expect(valueOf(before, 'pixeld_jobs', { model: MODEL })).toBe(0);
    expect(valueOf(before, 'pixeld_queue_pending_jobs', { backend: 'ref' })).toBe(0);
    expect(valueOf(before, 'pixeld_backend_in_flight_jobs', { backend: 'ref' })).toBe(0);
    expect(valueOf(before, 'pixeld_receipts_unsettled')).toBe(0);
    expect(valueOf(before, 'pixeld_receipts_unsettled_wei')).toBe(0);
    // This daemon does not settle (no chain): the family is declared with no samples.
    expect(before.types.get('pixeld_settlement_rounds_total')).toBe('counter');

    const ids = [await runJob(url, 2), await runJob(url, 3)];
    const after = await scrape(url);
    expect(valueOf(after, 'pixeld_images_delivered_total')).toBe(5);
    expect(valueOf(after, 'pixeld_jobs_finished_total', { outcome: 'completed' })).toBe(2);
    expect(valueOf(after, 'pixeld_jobs', { status: 'completed', model: MODEL })).toBe(2);
    expect(valueOf(after, 'pixeld_backend_attempt_duration_seconds_count', { backend: 'ref', outcome: 'completed' })).toBe(2);
    const submits = { method: 'POST', route: '/v1/async/images/generations', status: '202' };
    expect(valueOf(before, 'pixeld_http_request_duration_seconds_count', submits)).toBe(0);
    expect(valueOf(after, 'pixeld_http_request_duration_seconds_count', submits)).toBe(2);
    // Polls are counted under their route pattern, never the path with the job id.
    const polls = after.samples.filter((s) => s.name === 'pixeld_http_request_duration_seconds_count' && s.labels.route?.startsWith('/v1/async/jobs'));
    expect(polls.length).toBeGreaterThan(0);
    for (const p of polls) expect(p.labels.route).toMatch(/:/);
    // The scrape before this one is counted too.
    expect(valueOf(after, 'pixeld_http_request_duration_seconds_count', { route: '/metrics', status: '200' })).toBeGreaterThanOrEqual(1);
    const labelValues = after.samples.flatMap((s) => Object.values(s.labels));
    for (const id of ids) {
      expect(labelValues.some((v) => v.includes(id) || v.includes(id.replace(/^job_/, '')))).toBe(false);
    }
    expect(labelValues.some((v) => /[0-9a-f]{32}/.test(v))).toBe(false);
  });

  it('access admin: refused without the admin token (401 invalid_admin_token, OpenAI error shape)', async () => {
    daemon = await startTestDaemon({ config: config('admin') });
    for (const auth of [undefined, 'Bearer wrong-token']) {
      const res = await fetch(`${daemon.url}/metrics`, { headers: auth ? { authorization: auth } : {} });
      expect(res.status).toBe(401);
      const body = (await res.json()) as { error: { code: string; type: string; message: string } };
      expect(body.error).toMatchObject({ code: 'invalid_admin_token', type: expect.any(String), message: expect.any(String) });
    }
    await scrape(daemon.url, ADMIN_TOKEN);
  });

  it('access open: served without any token', async () => {
    daemon = await startTestDaemon({ config: config('open') });
    const exp = await scrape(daemon.url, undefined);
    expect(valueOf(exp, 'pixeld_info')).toBe(1);
  });
});
