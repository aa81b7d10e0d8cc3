import { readdirSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendError } from '../../src/backends/errors.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

const MODEL = 'ctl-model';

function controlledConfig(extra: Partial<ConfigInput> = {}, backend: Record<string, unknown> = {}): Partial<ConfigInput> {
  return {
    backends: [{ id: 'ctl', type: 'reference', concurrency: 1, maxImagesPerCall: 4, ...backend } as ConfigInput['backends'][number]],
    models: [{ id: MODEL, backend: 'ctl', capabilities: ['generation', 'edit'], sizes: ['64x64', '128x128'], maxN: 4 }],
    ...extra,
  };
}

let daemon: TestDaemon | undefined;
afterEach(async () => {
  await daemon?.close();
  daemon = undefined;
});

async function start(extra: Partial<ConfigInput> = {}, backendOptions: Record<string, unknown> = {}) {
  const backend = new ControlledBackend('ctl', (backendOptions.maxImagesPerCall as number | undefined) ?? 4);
  daemon = await startTestDaemon({ config: controlledConfig(extra, backendOptions), backends: new Map([['ctl', backend]]) });
  return { backend, url: daemon.url, d: daemon };
}

async function submit(url: string, body: Record<string, unknown>, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: MODEL, size: '64x64', ...body }),
  });
  return { res, body: (await res.json()) as Record<string, any> };
}

async function poll(url: string, id: string, query = '') {
  const res = await fetch(`${url}/v1/async/jobs/${id}${query}`);
  return { res, body: (await res.json()) as Record<string, any> };
}

async function waitForStatus(url: string, id: string, status: string) {
  for (let i = 0; i < 200; i += 1) {
    const { body } = await poll(url, id);
    if (body.status === status) return body;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`job ${id} never reached ${status}`);
}

describe('async job lifecycle (0G shape)', () => {
  it('accepts with 202, polls pending with Retry-After, completes with the OpenAI response and ZG-Res-Key', async () => {
    const { backend, url } = await start();
    const { res, body } = await submit(url, { prompt: 'a fox', n: 2 });
    expect(res.status).toBe(202);
    expect(body).toEqual({ jobId: expect.stringMatching(/^job_[0-9a-f]{32}$/), status: 'pending' });
    expect(res.headers.get('x-request-id')).toBeTruthy();

    const call = await backend.nextCall();
    expect(call.options.n).toBe(2);
    const running = await poll(url, body.jobId);
    expect(running.body.status).toBe('processing');
    expect(Number(running.res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(running.res.headers.get('zg-res-key')).toBeNull();

    await call.succeed();
    const done = await waitForStatus(url, body.jobId, 'completed');
    expect(done.createdAt).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(done.data.data).toHaveLength(2);
    expect(done.data).toMatchObject({ output_format: 'png', size: '64x64', quality: 'high', background: 'opaque' });
    const png = Buffer.from(done.data.data[0].b64_json, 'base64');
    expect((await sharp(png).metadata()).format).toBe('png');
    const final = await poll(url, body.jobId);
    expect(final.res.headers.get('zg-res-key')).toBe(body.jobId);
    expect(final.res.headers.get('retry-after')).toBeNull();
  });

  it('shows backend-reported progress in both poll shapes and extrapolates Retry-After from it', async () => {
    const { backend, url } = await start();
    const { body } = await submit(url, { prompt: 'progress', n: 2 });
    const call = await backend.nextCall();
    await new Promise((r) => setTimeout(r, 1_100));
    call.options.onProgress(50);
    const first = await poll(url, body.jobId);
    expect(first.body.progress).toBe(50);
    // Half done after ~1.1 s: about 1 s to go, not the 10 s the default per-image guess would say.
    expect(Number(first.res.headers.get('retry-after'))).toBeLessThanOrEqual(2);
    call.options.onProgress(30);
    const theRouter = (await (await fetch(`${url}/v1/jobs/${body.jobId}`)).json()) as Record<string, any>;
    expect(theRouter.progress).toBe(50);
    await call.succeed();
    const done = await waitForStatus(url, body.jobId, 'completed');
    expect(done.progress).toBeUndefined();
  });

  it('estimates Retry-After from the queue position, not a constant', async () => {
    const { backend, url } = await start();
    const a = await submit(url, { prompt: 'a' });
    await backend.nextCall();
    const b = await submit(url, { prompt: 'b' });
    const c = await submit(url, { prompt: 'c' });
    const d = await submit(url, { prompt: 'd', n: 4 });
    const ra = Number((await poll(url, a.body.jobId)).res.headers.get('retry-after'));
    const rb = Number((await poll(url, b.body.jobId)).res.headers.get('retry-after'));
    const rc = Number((await poll(url, c.body.jobId)).res.headers.get('retry-after'));
    const rd = Number((await poll(url, d.body.jobId)).res.headers.get('retry-after'));
    expect(ra).toBeGreaterThanOrEqual(1);
    expect(rb).toBeGreaterThan(ra);
    expect(rc).toBeGreaterThan(rb);
    expect(rd).toBeGreaterThan(rc);
  });

  it('long-polls with ?wait and returns as soon as the job ends', async () => {
    const { backend, url } = await start();
    const { body } = await submit(url, { prompt: 'wait for me' });
    const call = await backend.nextCall();
    const started = Date.now();
    const pending = poll(url, body.jobId, '?wait=20');
    await new Promise((r) => setTimeout(r, 200));
    await call.succeed();
    const result = await pending;
    expect(result.body.status).toBe('completed');
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('long-poll gives up after N seconds with the job still running', async () => {
    const { backend, url } = await start();
    const { body } = await submit(url, { prompt: 'slow' });
    await backend.nextCall();
    const started = Date.now();
    const result = await poll(url, body.jobId, '?wait=1');
    expect(result.body.status).toBe('processing');
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    expect(result.res.headers.get('retry-after')).toBeTruthy();
  });

  it('refuses a wait above the limit', async () => {
    const { url } = await start();
    const { body } = await submit(url, { prompt: 'x' });
    const res = await poll(url, body.jobId, '?wait=61');
    expect(res.res.status).toBe(400);
    expect(res.body.error.param).toBe('wait');
  });

  it('answers unknown and malformed job ids with 404 in the error shape', async () => {
    const { url } = await start();
    for (const id of ['job_00000000000000000000000000000000', 'nonsense', '..%2F..%2Fetc']) {
      const res = await poll(url, id);
      expect(res.res.status).toBe(404);
      expect(res.body.error).toMatchObject({ code: 'job_not_found', type: 'not_found_error' });
      expect(Object.keys(res.body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
    }
  });
});

describe('idempotency', () => {
  it('returns the original job for the same key and body, 409 for another body', async () => {
    const { backend, url } = await start();
    const first = await submit(url, { prompt: 'once' }, { 'Idempotency-Key': 'k-1' });
    expect(first.res.status).toBe(202);
    const again = await submit(url, { prompt: 'once' }, { 'Idempotency-Key': 'k-1' });
    expect(again.res.status).toBe(200);
    expect(again.body.jobId).toBe(first.body.jobId);
    const other = await submit(url, { prompt: 'twice' }, { 'Idempotency-Key': 'k-1' });
    expect(other.res.status).toBe(409);
    expect(other.body.error.code).toBe('idempotency_key_reused');
    expect(other.res.headers.get('x-should-retry')).toBe('false');
    const fresh = await submit(url, { prompt: 'once' }, { 'Idempotency-Key': 'k-2' });
    expect(fresh.body.jobId).not.toBe(first.body.jobId);
    // Only two jobs reached the backend.
    await (await backend.nextCall()).succeed();
    await (await backend.nextCall()).succeed();
    await waitForStatus(url, fresh.body.jobId, 'completed');
    expect(backend.calls).toHaveLength(2);
  });

  it('treats a multipart retry with a new boundary as the same request', async () => {
    const { url } = await start();
    const image = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#123456' } }).png().toBuffer();
    const send = async () => {
      const form = new FormData();
      form.append('model', MODEL);
      form.append('prompt', 'edit me');
      form.append('image[]', new Blob([new Uint8Array(image)], { type: 'image/png' }), 'a.png');
      const res = await fetch(`${url}/v1/async/images/edits`, { method: 'POST', body: form, headers: { 'Idempotency-Key': 'edit-1' } });
      return { res, body: (await res.json()) as Record<string, any> };
    };
    const first = await send();
    const second = await send();
    expect(first.res.status).toBe(202);
    expect(second.res.status).toBe(200);
    expect(second.body.jobId).toBe(first.body.jobId);
  });

  it('rejects a malformed key', async () => {
    const { url } = await start();
    const res = await submit(url, { prompt: 'x' }, { 'Idempotency-Key': 'has space' });
    expect(res.res.status).toBe(400);
  });
});

describe('cancel', () => {
  it('cancels a pending job before it reaches the backend', async () => {
    const { backend, url } = await start();
    const first = await submit(url, { prompt: 'first' });
    const firstCall = await backend.nextCall();
    const second = await submit(url, { prompt: 'second' });
    const res = await fetch(`${url}/v1/async/jobs/${second.body.jobId}/cancel`, { method: 'POST' });
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, any>;
    expect(body).toMatchObject({ status: 'failed', errorMessage: expect.stringContaining('cancel') });
    const theRouter = (await (await fetch(`${url}/v1/jobs/${second.body.jobId}`)).json()) as Record<string, any>;
    expect(theRouter.status).toBe('cancelled');
    await firstCall.succeed();
    await waitForStatus(url, first.body.jobId, 'completed');
    await new Promise((r) => setTimeout(r, 100));
    expect(backend.calls.map((c) => c.options.prompt)).toEqual(['first']);
  });

  it('aborts the running backend call', async () => {
    const { backend, url } = await start();
    const job = await submit(url, { prompt: 'running' });
    const call = await backend.nextCall();
    const res = await fetch(`${url}/v1/jobs/${job.body.jobId}/cancel`, { method: 'POST' });
    expect(((await res.json()) as Record<string, any>).status).toBe('cancelled');
    expect(call.options.signal.aborted).toBe(true);
    expect(backend.aborted).toEqual(['running']);
    // The runner slot is free again: the next job runs.
    const next = await submit(url, { prompt: 'after' });
    await (await backend.nextCall()).succeed();
    await waitForStatus(url, next.body.jobId, 'completed');
  });

  it('refuses to cancel a completed job with 409', async () => {
    const { backend, url } = await start();
    const job = await submit(url, { prompt: 'done' });
    await (await backend.nextCall()).succeed();
    await waitForStatus(url, job.body.jobId, 'completed');
    const res = await fetch(`${url}/v1/async/jobs/${job.body.jobId}/cancel`, { method: 'POST' });
    expect(res.status).toBe(409);
    expect(((await res.json()) as Record<string, any>).error.code).toBe('job_not_cancellable');
  });

  it('cancels a sync job whose caller disconnected', async () => {
    const { backend, url, d } = await start();
    const controller = new AbortController();
    const request = fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'impatient', size: '64x64' }),
      signal: controller.signal,
    }).catch(() => undefined);
    const call = await backend.nextCall();
    controller.abort();
    await request;
    for (let i = 0; i < 100 && !call.options.signal.aborted; i += 1) await new Promise((r) => setTimeout(r, 20));
    expect(call.options.signal.aborted).toBe(true);
    const rows = d.logs.filter((l) => l.message === 'job cancelled' && l.reason === 'the sync caller disconnected');
    expect(rows).toHaveLength(1);
  });
});

describe('admission and failures', () => {
  it('answers 429 with Retry-After when the queue is full', async () => {
    const { backend, url } = await start({}, { maxQueuedJobs: 2 });
    await submit(url, { prompt: 'running' });
    await backend.nextCall();
    expect((await submit(url, { prompt: 'q1' })).res.status).toBe(202);
    expect((await submit(url, { prompt: 'q2' })).res.status).toBe(202);
    const full = await submit(url, { prompt: 'q3' });
    expect(full.res.status).toBe(429);
    expect(full.body.error.code).toBe('queue_full');
    expect(Number(full.res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    // Sync requests are admitted through the same gate.
    const sync = await fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'sync', size: '64x64' }),
    });
    expect(sync.status).toBe(429);
  });

  it('retries transient backend failures with backoff, then completes', async () => {
    const { backend, url, d } = await start({ jobs: { maxAttempts: 3, retryBackoffMs: 10 } });
    const job = await submit(url, { prompt: 'flaky' });
    (await backend.nextCall()).fail(new BackendError('ctl', 'unavailable', 'HTTP 503'));
    (await backend.nextCall()).fail(new BackendError('ctl', 'unavailable', 'connect ECONNREFUSED'));
    await (await backend.nextCall()).succeed();
    await waitForStatus(url, job.body.jobId, 'completed');
    expect((await d.daemon.store.get(job.body.jobId))!.attempts).toBe(3);
  });

  it('fails after the last attempt with upstream_error', async () => {
    const { backend, url } = await start({ jobs: { maxAttempts: 2, retryBackoffMs: 10 } });
    const job = await submit(url, { prompt: 'down' });
    (await backend.nextCall()).fail(new BackendError('ctl', 'unavailable', 'HTTP 502'));
    (await backend.nextCall()).fail(new BackendError('ctl', 'unavailable', 'HTTP 502'));
    const failed = await waitForStatus(url, job.body.jobId, 'failed');
    expect(failed.errorCode).toBe('upstream_error');
    expect(failed.errorMessage).toContain('HTTP 502');
  });

  it('fails at once on a backend 4xx, with the backend message, and answers a sync caller 502', async () => {
    const { backend, url } = await start();
    const sync = fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'bad', size: '64x64' }),
    });
    (await backend.nextCall()).fail(new BackendError('ctl', 'rejected', 'guidance_scale out of range', { status: 422 }));
    const res = await sync;
    expect(res.status).toBe(502);
    expect(res.headers.get('x-should-retry')).toBe('false');
    const body = (await res.json()) as Record<string, any>;
    expect(body.error).toMatchObject({ code: 'upstream_error', type: 'upstream_error' });
    expect(body.error.message).toContain('guidance_scale out of range');
    expect(backend.calls).toHaveLength(1);
  });

  it('aborts an attempt at the deadline and fails with upstream_timeout', async () => {
    const { backend, url } = await start({ jobs: { attemptTimeoutMs: 300 } });
    const job = await submit(url, { prompt: 'hang' });
    const call = await backend.nextCall();
    const failed = await waitForStatus(url, job.body.jobId, 'failed');
    expect(failed.errorCode).toBe('upstream_timeout');
    expect(call.options.signal.aborted).toBe(true);
  });

  it('tops up a short answer with calls on fresh seeds', async () => {
    const { backend, url } = await start();
    const job = await submit(url, { prompt: 'four', n: 4, seed: 100 });
    const first = await backend.nextCall();
    expect(first.options).toMatchObject({ n: 4, seed: 100 });
    await first.succeed(1);
    const topUp = await backend.nextCall();
    expect(topUp.options).toMatchObject({ n: 3, seed: 104 });
    await topUp.succeed(3);
    const done = await waitForStatus(url, job.body.jobId, 'completed');
    expect(done.data.data).toHaveLength(4);
    expect(done.imagesDelivered).toBeUndefined();
  });

  it('reports how many images it delivered when top-ups run out', async () => {
    const { backend, url } = await start({ jobs: { maxTopUpCalls: 1 } });
    const job = await submit(url, { prompt: 'short', n: 3 });
    await (await backend.nextCall()).succeed(1);
    await (await backend.nextCall()).succeed(1);
    const done = await waitForStatus(url, job.body.jobId, 'completed');
    expect(done.data.data).toHaveLength(2);
    expect(done).toMatchObject({ imagesRequested: 3, imagesDelivered: 2 });
  });

  it('splits n larger than maxImagesPerCall into several calls', async () => {
    const { backend, url } = await start({}, { maxImagesPerCall: 1 });
    const job = await submit(url, { prompt: 'split', n: 3, seed: 7 });
    for (const seed of [7, 8, 9]) {
      const call = await backend.nextCall();
      expect(call.options).toMatchObject({ n: 1, seed });
      await call.succeed();
    }
    expect((await waitForStatus(url, job.body.jobId, 'completed')).data.data).toHaveLength(3);
  });

  it('fails a 200 without images, and garbage bytes, as upstream errors', async () => {
    const { backend, url } = await start({ jobs: { maxTopUpCalls: 0 } });
    const empty = await submit(url, { prompt: 'empty' });
    (await backend.nextCall()).respond([]);
    expect((await waitForStatus(url, empty.body.jobId, 'failed')).errorCode).toBe('upstream_error');
    const garbage = await submit(url, { prompt: 'garbage' });
    (await backend.nextCall()).respond([Buffer.from('<html>oops</html>')]);
    const failed = await waitForStatus(url, garbage.body.jobId, 'failed');
    expect(failed.errorMessage).toContain('not a png, jpeg or webp');
  });
});

describe('output formats and url results', () => {
  it('converts to the requested format and serves url results from the daemon', async () => {
    const { backend, url } = await start();
    const job = await submit(url, { prompt: 'jpeg please', output_format: 'jpeg', output_compression: 50, response_format: 'url' });
    await (await backend.nextCall()).succeed();
    const done = await waitForStatus(url, job.body.jobId, 'completed');
    expect(done.data.output_format).toBe('jpeg');
    const link: string = done.data.data[0].url;
    expect(link).toMatch(new RegExp(`^${url}/v1/files/${job.body.jobId}/[0-9a-f]{32}/0\\.jpeg$`));
    const file = await fetch(link);
    expect(file.headers.get('content-type')).toBe('image/jpeg');
    expect((await sharp(Buffer.from(await file.arrayBuffer())).metadata()).format).toBe('jpeg');
    // A wrong token is indistinguishable from a missing file.
    expect((await fetch(link.replace(/\/[0-9a-f]{32}\//, `/${'0'.repeat(32)}/`))).status).toBe(404);
  });

  it('delivers bytes untouched when the backend already returned the requested format', async () => {
    const { backend, url } = await start();
    const png = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#336699' } }).png({ compressionLevel: 1 }).toBuffer();
    const job = await submit(url, { prompt: 'same format' });
    (await backend.nextCall()).respond([png]);
    const done = await waitForStatus(url, job.body.jobId, 'completed');
    expect(Buffer.from(done.data.data[0].b64_json, 'base64').equals(png)).toBe(true);
  });
});

describe('theRouter shape', () => {
  it('?async=true answers 202 with an id and poll URL; /v1/jobs/{id} reports queued → running → succeeded', async () => {
    const { backend, url } = await start();
    const res = await fetch(`${url}/v1/images/generations?async=true`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'router', size: '64x64' }),
    });
    expect(res.status).toBe(202);
    const body = (await res.json()) as Record<string, any>;
    expect(body).toMatchObject({ id: expect.stringMatching(/^job_/), status: 'queued', polling_url: `${url}/v1/jobs/${body.id}` });
    const call = await backend.nextCall();
    expect(((await (await fetch(body.polling_url)).json()) as Record<string, any>).status).toBe('running');
    await call.succeed();
    const done = (await (await fetch(`${body.polling_url}?wait=10`)).json()) as Record<string, any>;
    expect(done.status).toBe('succeeded');
    expect(done.result.data).toHaveLength(1);
  });
});

describe('result expiry', () => {
  it('expires results after the TTL: 0G poll 404, theRouter "expired", files deleted by the sweeper', async () => {
    const { backend, url, d } = await start({ jobs: { resultTtlMs: 1000, orphanGraceMs: 0 } });
    const job = await submit(url, { prompt: 'short-lived', response_format: 'url' });
    await (await backend.nextCall()).succeed();
    const done = await waitForStatus(url, job.body.jobId, 'completed');
    const link: string = done.data.data[0].url;
    const blobFiles = () => readdirSync(path.join(d.dataDir, 'blobs'), { recursive: true }).filter((f) => String(f).length > 10);
    expect(blobFiles()).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 1100));

    const expired = await poll(url, job.body.jobId);
    expect(expired.res.status).toBe(404);
    expect(expired.body.error.code).toBe('job_expired');
    const theRouter = (await (await fetch(`${url}/v1/jobs/${job.body.jobId}`)).json()) as Record<string, any>;
    expect(theRouter.status).toBe('expired');
    expect(theRouter.result).toBeUndefined();
    expect((await fetch(link)).status).toBe(404);

    const report = await d.daemon.sweeper.sweep();
    expect(report.resultsExpired).toBe(1);
    expect(report.blobsDeleted).toBe(1);
    expect(blobFiles()).toHaveLength(0);
    // After the sweep it still reads the same way.
    expect((await poll(url, job.body.jobId)).res.status).toBe(404);
    expect(((await (await fetch(`${url}/v1/jobs/${job.body.jobId}`)).json()) as Record<string, any>).status).toBe('expired');
  });

  it('keeps a blob that another live job still references', async () => {
    const { backend, url, d } = await start({ jobs: { resultTtlMs: 1000, orphanGraceMs: 0 } });
    const png = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#aa0000' } }).png().toBuffer();
    const a = await submit(url, { prompt: 'a' });
    (await backend.nextCall()).respond([png]);
    await waitForStatus(url, a.body.jobId, 'completed');
    await new Promise((r) => setTimeout(r, 1100));
    const b = await submit(url, { prompt: 'b' });
    (await backend.nextCall()).respond([png]);
    await waitForStatus(url, b.body.jobId, 'completed');
    const report = await d.daemon.sweeper.sweep();
    expect(report.resultsExpired).toBe(1);
    expect(report.blobsDeleted).toBe(0);
    const live = await poll(url, b.body.jobId);
    expect(Buffer.from(live.body.data.data[0].b64_json, 'base64').equals(png)).toBe(true);
  });
});

describe('service endpoints', () => {
  it('lists models with capabilities, sizes, max n and price', async () => {
    const { url } = await start();
    const res = await fetch(`${url}/v1/models`);
    const body = (await res.json()) as Record<string, any>;
    expect(body.object).toBe('list');
    expect(body.data[0]).toMatchObject({
      id: MODEL,
      object: 'model',
      capabilities: { generation: true, edit: true },
      sizes: ['64x64', '128x128'],
      max_n: 4,
      pricing: { image: '0', unit: 'wei' },
      tee_attested: false,
      verifiability: 'none',
    });
  });

  it('answers /healthz and /readyz, and 404 in the error shape for unknown routes', async () => {
    const { url } = await start();
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    const ready = await fetch(`${url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ ready: true, store: 'ok', backends: { ctl: 'ok' } });
    const missing = await fetch(`${url}/v1/nothing-here`);
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as Record<string, any>).error.code).toBe('not_found');
    expect(missing.headers.get('x-request-id')).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const echoed = await fetch(`${url}/healthz`, { headers: { 'x-request-id': 'router-abc-1' } });
    expect(echoed.headers.get('x-request-id')).toBe('router-abc-1');
  });

  it('reports a failing backend in /readyz with 503', async () => {
    const backend = new ControlledBackend('ctl');
    backend.checkHealth = async () => {
      throw new Error('connect ECONNREFUSED 127.0.0.1:30000');
    };
    daemon = await startTestDaemon({ config: controlledConfig(), backends: new Map([['ctl', backend]]) });
    const res = await fetch(`${daemon.url}/readyz`);
    expect(res.status).toBe(503);
    expect(((await res.json()) as Record<string, any>).backends.ctl).toContain('ECONNREFUSED');
  });
});

describe('warnings', () => {
  it('tells pollers what the backend could not honour', async () => {
    daemon = await startTestDaemon();
    const res = await fetch(`${daemon.url}/v1/async/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'a fox', size: '256x256', negative_prompt: 'blurry' }),
    });
    const { jobId } = (await res.json()) as { jobId: string };
    const done = (await (await fetch(`${daemon.url}/v1/async/jobs/${jobId}?wait=10`)).json()) as Record<string, any>;
    expect(done.status).toBe('completed');
    expect(done.warnings).toEqual([expect.stringMatching(/^negative_prompt: /)]);
    const theRouter = (await (await fetch(`${daemon.url}/v1/jobs/${jobId}`)).json()) as Record<string, any>;
    expect(theRouter.warnings).toEqual(done.warnings);
    expect(daemon.logs.find((l) => l.message === 'job completed')?.warnings).toEqual(done.warnings);
  });
});
