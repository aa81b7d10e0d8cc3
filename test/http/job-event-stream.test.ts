import { createHash } from 'node:crypto';
import Database from 'better-sqlite3';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendError } from '../../src/backends/errors.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { sqliteFile } from '../../src/jobs/open-stores.js';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { openSse, type SseConnection, type SseEvent } from '../helpers/sse.js';

/**
 * GET /v1/async/jobs/{id}/events: a job's stored history as server-sent events, resumable with
 * Last-Event-ID, with live progress and partial images from the replica running it. The backend is driven
 * by hand, so every event is caused by the test.
 */

const MODEL = 'ctl-model';
const KEY_A = 'sk-owner-a-0123456789';
const KEY_B = 'sk-owner-b-0123456789';

let daemon: TestDaemon | undefined;
const streams: SseConnection[] = [];
afterEach(async () => {
  for (const s of streams.splice(0)) s.close();
  await daemon?.close();
  daemon = undefined;
});

async function start(extra: Partial<ConfigInput> = {}) {
  const backend = new ControlledBackend('ctl');
  daemon = await startTestDaemon({
    config: {
      backends: [{ id: 'ctl', type: 'reference', concurrency: 1 } as ConfigInput['backends'][number]],
      models: [{ id: MODEL, backend: 'ctl', capabilities: ['generation'], sizes: ['64x64'] }],
      ...extra,
    },
    backends: new Map([['ctl', backend]]),
  });
  return { backend, url: daemon.url };
}

async function submit(url: string, body: Record<string, unknown> = {}, headers: Record<string, string> = {}): Promise<string> {
  const res = await fetch(`${url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: MODEL, prompt: 'a lighthouse at dusk', size: '64x64', ...body }),
  });
  const json = (await res.json()) as Record<string, any>;
  expect(res.status, JSON.stringify(json)).toBe(202);
  return json.jobId as string;
}

async function events(url: string, headers: Record<string, string> = {}): Promise<SseConnection> {
  const stream = await openSse(url, headers);
  streams.push(stream);
  return stream;
}

function data(event: SseEvent | undefined): Record<string, any> {
  expect(event).toBeDefined();
  return JSON.parse(event!.data) as Record<string, any>;
}

async function pollBody(url: string): Promise<Record<string, any>> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  return (await res.json()) as Record<string, any>;
}

async function waitForCompleted(url: string, jobId: string): Promise<void> {
  const res = await fetch(`${url}/v1/async/jobs/${jobId}?wait=10`);
  expect(((await res.json()) as Record<string, any>).status).toBe('completed');
}

describe('job event stream', () => {
  it('streams a job from queued to succeeded; the terminal event carries the poll body and ends the stream', async () => {
    const { backend, url } = await start();
    const jobId = await submit(url);
    const stream = await events(`${url}/v1/async/jobs/${jobId}/events`);
    expect(stream.status).toBe(200);
    expect(stream.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    expect(stream.headers.get('cache-control')).toBe('no-cache');
    expect(stream.headers.get('x-accel-buffering')).toBe('no');

    const queued = await stream.next();
    expect(queued).toMatchObject({ event: 'job.queued', id: '1' });
    expect(data(queued)).toMatchObject({ job_id: jobId, seq: 1, type: 'queued', attempt: 0, status: 'pending', detail: {} });
    expect(Date.parse(data(queued).at)).toBeGreaterThan(Date.now() - 60_000);
    expect(JSON.stringify(data(queued))).not.toContain('lighthouse');

    const call = await backend.nextCall();
    const started = await stream.next();
    expect(started).toMatchObject({ event: 'job.started', id: '2' });
    expect(data(started)).toMatchObject({ seq: 2, type: 'started', attempt: 1, status: 'processing' });

    call.options.onProgress(40);
    const progress = await stream.next();
    // Live only: no id, so a reconnect resumes after the last stored event.
    expect(progress).toMatchObject({ event: 'job.progress', id: undefined, lastEventId: '2' });
    expect(data(progress)).toEqual({ job_id: jobId, percent: 40 });

    await call.succeed();
    const succeeded = await stream.next();
    expect(succeeded).toMatchObject({ event: 'job.succeeded', id: '3' });
    const body = data(succeeded);
    expect(body).toMatchObject({ seq: 3, type: 'succeeded', status: 'completed', detail: { images: 1 } });
    expect(body.poll).toEqual(await pollBody(`${url}/v1/async/jobs/${jobId}`));
    expect(body.poll.status).toBe('completed');
    expect(await stream.next()).toBeUndefined();
  });

  it('theRouter family: /v1/jobs/{id}/events ends with the /v1/jobs/{id} poll body', async () => {
    const { backend, url } = await start();
    const jobId = await submit(url);
    await (await backend.nextCall()).succeed();
    const stream = await events(`${url}/v1/jobs/${jobId}/events`);
    const all = await stream.rest();
    expect(all.map((e) => e.event)).toEqual(['job.queued', 'job.started', 'job.succeeded']);
    expect(data(all[2]).poll).toEqual(await pollBody(`${url}/v1/jobs/${jobId}`));
  });

  it('a client that leaves does not cancel the job; Last-Event-ID resumes with exactly the events it missed', async () => {
    const { backend, url } = await start({ jobs: { maxAttempts: 2, retryBackoffMs: 50 } });
    const jobId = await submit(url);
    const first = await events(`${url}/v1/async/jobs/${jobId}/events`);
    expect((await first.next())?.id).toBe('1');
    const call = await backend.nextCall();
    const started = await first.next();
    expect(started?.id).toBe('2');
    first.close();

    // Gone while the job runs: a transient failure and its retry happen unseen.
    call.fail(new BackendError('ctl', 'unavailable', 'HTTP 503'));
    const retry = await backend.nextCall();
    expect((await pollBody(`${url}/v1/async/jobs/${jobId}`)).status).toBe('processing');

    const second = await events(`${url}/v1/async/jobs/${jobId}/events`, { 'Last-Event-ID': started!.lastEventId });
    const missed = [await second.next(), await second.next()];
    expect(missed.map((e) => [e?.event, e?.id])).toEqual([
      ['job.retry_scheduled', '3'],
      ['job.started', '4'],
    ]);
    expect(data(missed[0])).toMatchObject({ status: 'pending', attempt: 1, detail: { error: { code: expect.any(String) } } });
    expect(data(missed[1])).toMatchObject({ status: 'processing', attempt: 2 });
    await retry.succeed();
    const rest = await second.rest();
    expect(rest.map((e) => [e.event, e.id])).toEqual([['job.succeeded', '5']]);

    // The query parameter does the same for clients that cannot set headers; past the end there is nothing.
    const fromQuery = await events(`${url}/v1/async/jobs/${jobId}/events?last_event_id=3`);
    expect((await fromQuery.rest()).map((e) => e.id)).toEqual(['4', '5']);
    // Past the end of an ended job: 204, which tells EventSource to stop reconnecting.
    const afterEnd = await events(`${url}/v1/async/jobs/${jobId}/events`, { 'Last-Event-ID': '5' });
    expect(afterEnd.status).toBe(204);
    expect(await afterEnd.rest()).toEqual([]);
  });

  it('a failed job ends with its error in the event and in the poll body', async () => {
    const { backend, url } = await start();
    const jobId = await submit(url);
    (await backend.nextCall()).fail(new BackendError('ctl', 'moderation', 'the prompt was blocked'));
    const all = await (await events(`${url}/v1/async/jobs/${jobId}/events`)).rest();
    expect(all.map((e) => e.event)).toEqual(['job.queued', 'job.started', 'job.failed']);
    const failed = data(all[2]);
    expect(failed).toMatchObject({ status: 'failed', detail: { error: { code: expect.any(String), message: expect.any(String) } } });
    expect(failed.poll).toEqual(await pollBody(`${url}/v1/async/jobs/${jobId}`));
    expect(failed.poll.status).toBe('failed');
    expect(failed.poll.errorCode).toBe(failed.detail.error.code);
  });

  it('a cancelled job ends with job.cancelled', async () => {
    const { backend, url } = await start();
    const jobId = await submit(url);
    const stream = await events(`${url}/v1/async/jobs/${jobId}/events`);
    await backend.nextCall();
    expect((await stream.next())?.event).toBe('job.queued');
    expect((await stream.next())?.event).toBe('job.started');
    expect((await fetch(`${url}/v1/async/jobs/${jobId}/cancel`, { method: 'POST' })).status).toBe(200);
    const rest = await stream.rest();
    expect(rest.map((e) => e.event)).toEqual(['job.cancelled']);
    // 0G's poll has no cancelled status: a cancelled job reads as failed there, with the cancel's error.
    expect(data(rest[0])).toMatchObject({ status: 'cancelled', poll: { status: 'failed', errorCode: data(rest[0]).detail.error.code } });
  });

  it('relays an async job\'s partial images, at most partial_images, converted, without ids', async () => {
    const { backend, url } = await start();
    const jobId = await submit(url, { partial_images: 2, output_format: 'jpeg' });
    const stream = await events(`${url}/v1/async/jobs/${jobId}/events`);
    const call = await backend.nextCall();
    expect(call.options.onPartialImage).toBeDefined();
    const preview = await sharp({ create: { width: 32, height: 32, channels: 3, background: { r: 200, g: 10, b: 10 } } }).png().toBuffer();
    // Previews are spread over the job: the first once a third is done, the second at two thirds.
    for (const percent of [10, 40, 70, 90]) {
      call.options.onProgress(percent);
      call.options.onPartialImage!(preview);
    }
    const seen: SseEvent[] = [];
    while (seen.filter((e) => e.event === 'job.partial_image').length < 2) seen.push((await stream.next())!);
    await call.succeed();
    seen.push(...(await stream.rest()));
    const partials = seen.filter((e) => e.event === 'job.partial_image');
    expect(partials).toHaveLength(2);
    for (const [i, partial] of partials.entries()) {
      expect(partial.id).toBeUndefined();
      const body = data(partial);
      expect(body).toMatchObject({ job_id: jobId, partial_image_index: i, output_format: 'jpeg' });
      const meta = await sharp(Buffer.from(body.b64_json as string, 'base64')).metadata();
      expect(meta).toMatchObject({ format: 'jpeg', width: 32, height: 32 });
    }
    expect(seen.filter((e) => e.id !== undefined).map((e) => e.event)).toEqual(['job.queued', 'job.started', 'job.succeeded']);
    // Previews are not kept past the job: a stream opened now gets the history only.
    const later = await (await events(`${url}/v1/async/jobs/${jobId}/events`)).rest();
    expect(later.map((e) => e.event)).toEqual(['job.queued', 'job.started', 'job.succeeded']);
  });

  it('without partial_images the backend is not asked for previews', async () => {
    const { backend, url } = await start();
    await submit(url);
    const call = await backend.nextCall();
    expect(call.options.onPartialImage).toBeUndefined();
    await call.succeed();
  });

  it('partial_images on a sync request without a stream is still refused', async () => {
    const { url } = await start();
    const res = await fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'p', size: '64x64', partial_images: 1 }),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as any).error).toMatchObject({ code: 'invalid_request', param: 'partial_images' });
  });

  it('an invalid Last-Event-ID or last_event_id → 400 naming it', async () => {
    const { backend, url } = await start();
    const jobId = await submit(url);
    for (const [query, headers, param] of [
      ['', { 'Last-Event-ID': 'abc' }, 'Last-Event-ID'],
      ['', { 'Last-Event-ID': '-1' }, 'Last-Event-ID'],
      ['?last_event_id=1.5', {}, 'last_event_id'],
      ['?last_event_id=1&last_event_id=2', {}, 'last_event_id'],
    ] as const) {
      const stream = await events(`${url}/v1/async/jobs/${jobId}/events${query}`, headers);
      expect(stream.status).toBe(400);
      expect((await stream.errorBody()).error).toMatchObject({ type: 'invalid_request_error', code: 'invalid_request', param });
    }
    // An empty one is no last event at all: the stream starts from the beginning.
    const fromStart = await events(`${url}/v1/async/jobs/${jobId}/events`, { 'Last-Event-ID': '' });
    expect((await fromStart.next())?.id).toBe('1');
    await (await backend.nextCall()).succeed();
  });

  it('a job that ended before histories were kept answers 204 (nothing to stream, no reconnecting)', async () => {
    const { backend, url } = await start();
    const jobId = await submit(url);
    await (await backend.nextCall()).succeed();
    await waitForCompleted(url, jobId);
    const db = new Database(sqliteFile(daemon!.config));
    try {
      db.prepare('DELETE FROM job_events WHERE job_id = ?').run(jobId);
    } finally {
      db.close();
    }
    const stream = await events(`${url}/v1/async/jobs/${jobId}/events`);
    expect(stream.status).toBe(204);
    expect(await stream.rest(3_000)).toEqual([]);
    // Its poll still answers.
    expect((await pollBody(`${url}/v1/async/jobs/${jobId}`)).status).toBe('completed');
  });

  it('a stream stays open at most jobs.eventStreamMaxSeconds; the client resumes where it stopped', async () => {
    const { backend, url } = await start({ jobs: { eventStreamMaxSeconds: 1 } });
    const jobId = await submit(url);
    const call = await backend.nextCall();
    const stream = await events(`${url}/v1/async/jobs/${jobId}/events`);
    const before = Date.now();
    const seen = await stream.rest(5_000);
    expect(Date.now() - before).toBeGreaterThanOrEqual(900);
    expect(seen.map((e) => e.id)).toEqual(['1', '2']);
    expect((await pollBody(`${url}/v1/async/jobs/${jobId}`)).status).toBe('processing');
    await call.succeed();
    const resumed = await (await events(`${url}/v1/async/jobs/${jobId}/events`, { 'Last-Event-ID': '2' })).rest();
    expect(resumed.map((e) => e.event)).toEqual(['job.succeeded']);
  });
});

describe('job event stream access', () => {
  const sha = (key: string) => createHash('sha256').update(key).digest('hex');
  const auth = (key: string) => ({ authorization: `Bearer ${key}` });
  const apiKeys = { auth: { mode: 'api-key', apiKeys: [{ owner: 'owner-a', sha256: sha(KEY_A) }, { owner: 'owner-b', sha256: sha(KEY_B) }] } } as Partial<ConfigInput>;

  it("another owner's job and an unknown job read alike: 404 job_not_found; no credentials: 401", async () => {
    const { backend, url } = await start(apiKeys);
    const jobId = await submit(url, {}, auth(KEY_A));
    const theirs = await events(`${url}/v1/async/jobs/${jobId}/events`, auth(KEY_B));
    const unknown = await events(`${url}/v1/async/jobs/job_${'0'.repeat(32)}/events`, auth(KEY_B));
    for (const refused of [theirs, unknown]) {
      expect(refused.status).toBe(404);
      expect((await refused.errorBody()).error.code).toBe('job_not_found');
    }
    expect((await events(`${url}/v1/jobs/${jobId}/events`, auth(KEY_B))).status).toBe(404);
    expect((await events(`${url}/v1/async/jobs/${jobId}/events`)).status).toBe(401);
    const own = await events(`${url}/v1/async/jobs/${jobId}/events`, auth(KEY_A));
    expect((await own.next())?.event).toBe('job.queued');
    await (await backend.nextCall()).succeed();
  });

  it('an owner may hold jobs.maxEventStreamsPerOwner streams at once (429 beyond); others are not counted against it', async () => {
    const { backend, url } = await start({ ...apiKeys, jobs: { maxEventStreamsPerOwner: 2 } });
    const jobId = await submit(url, {}, auth(KEY_A));
    const theirJob = await submit(url, {}, auth(KEY_B));
    const held = [await events(`${url}/v1/async/jobs/${jobId}/events`, auth(KEY_A)), await events(`${url}/v1/jobs/${jobId}/events`, auth(KEY_A))];
    for (const s of held) expect(s.status).toBe(200);
    const third = await events(`${url}/v1/async/jobs/${jobId}/events`, auth(KEY_A));
    expect(third.status).toBe(429);
    expect((await third.errorBody()).error).toMatchObject({ code: 'rate_limit_exceeded', type: 'rate_limit_error' });
    expect((await events(`${url}/v1/async/jobs/${theirJob}/events`, auth(KEY_B))).status).toBe(200);

    // A closed stream gives its place back once the daemon sees the socket go.
    held[0]!.close();
    let status = 0;
    for (let i = 0; i < 50 && status !== 200; i += 1) {
      const retry = await events(`${url}/v1/async/jobs/${jobId}/events`, auth(KEY_A));
      status = retry.status;
      if (status !== 200) await new Promise((r) => setTimeout(r, 50));
    }
    expect(status).toBe(200);
    await (await backend.nextCall()).succeed();
  });
});
