import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { colourForSeed, startFakeSiliconFlowServer, type FakeSiliconFlowServer } from '../fakes/siliconflow-server.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/** The daemon in front of a SiliconFlow-style hosted API, driven through its public HTTP API only. */

const KEY = 'sk-sf-e2e';

const daemons: TestDaemon[] = [];
let fake: FakeSiliconFlowServer | undefined;
afterEach(async () => {
  await Promise.all(daemons.splice(0).map((d) => d.close()));
  await fake?.close();
  fake = undefined;
});

async function startDaemon(backend: Record<string, unknown> = {}, jobs: ConfigInput['jobs'] = {}): Promise<TestDaemon> {
  const daemon = await startTestDaemon({
    config: {
      backends: [{ id: 'sf', type: 'siliconflow', baseUrl: fake!.url, apiKey: KEY, concurrency: 2, ...backend } as ConfigInput['backends'][number]],
      models: [
        { id: 'kolors', backend: 'sf', backendModel: 'Kwai-Kolors/Kolors', capabilities: ['generation'], sizes: ['256x256', '512x512'] },
        { id: 'qwen-edit', backend: 'sf', backendModel: 'Qwen/Qwen-Image-Edit-2509', capabilities: ['edit'], sizes: ['256x256'] },
        { id: 'ghost', backend: 'sf', backendModel: 'no/such-model', capabilities: ['generation'], sizes: ['256x256'] },
      ],
      jobs: { retryBackoffMs: 10, ...jobs },
    },
  });
  daemons.push(daemon);
  return daemon;
}

async function start(backend: Record<string, unknown> = {}, jobs: ConfigInput['jobs'] = {}): Promise<TestDaemon> {
  fake = await startFakeSiliconFlowServer({ requireApiKey: KEY });
  return startDaemon(backend, jobs);
}

async function post(url: string, path: string, body: unknown) {
  const res = await fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { res, body: (await res.json()) as Record<string, any> };
}

async function firstPixel(b64: string): Promise<[number, number, number]> {
  const { data } = await sharp(Buffer.from(b64, 'base64')).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return [data[0]!, data[1]!, data[2]!];
}

const solid = (colour: string, size = 256) => sharp({ create: { width: size, height: size, channels: 3, background: colour } }).png().toBuffer();
/** Left half alpha 0 (edit here), right half alpha 255 (keep). */
const halfMask = (size = 256) => {
  const rgba = Buffer.alloc(size * size * 4);
  for (let y = 0; y < size; y += 1) for (let x = size / 2; x < size; x += 1) rgba[(y * size + x) * 4 + 3] = 255;
  return sharp(rgba, { raw: { width: size, height: size, channels: 4 } }).png().toBuffer();
};

const generations = () => fake!.requests.filter((r) => r.method === 'POST' && r.path === '/v1/images/generations');

describe('daemon in front of a SiliconFlow-style API', () => {
  it('generates: maps the request, downloads the URL, logs the trace id', async () => {
    const daemon = await start();
    const { res, body } = await post(daemon.url, '/v1/images/generations', { model: 'kolors', prompt: 'a lighthouse', size: '256x256', seed: 42 });
    expect(res.status).toBe(200);
    expect(body.data).toHaveLength(1);
    expect(await sharp(Buffer.from(body.data[0].b64_json, 'base64')).metadata()).toMatchObject({ format: 'png', width: 256, height: 256 });
    expect(await firstPixel(body.data[0].b64_json)).toEqual(colourForSeed(42));

    const [call] = generations();
    expect(call!.headers.authorization).toBe(`Bearer ${KEY}`);
    expect(call!.json).toEqual({ model: 'Kwai-Kolors/Kolors', prompt: 'a lighthouse', image_size: '256x256', batch_size: 1, seed: 42 });
    expect(fake!.requests.filter((r) => r.path.startsWith('/files/'))).toHaveLength(1);
    expect(daemon.logs).toContainEqual(expect.objectContaining({ message: 'siliconflow call answered', traceId: call!.traceId, backendId: 'sf' }));
  });

  it('edits: sends the image as a data URL, drops the mask with a warning, still delivers', async () => {
    const daemon = await start();
    const input = await solid('#ff0000');
    const form = new FormData();
    form.append('model', 'qwen-edit');
    form.append('prompt', 'paint the left half');
    form.append('size', '256x256');
    form.append('seed', '9');
    form.append('image[]', new Blob([new Uint8Array(input)], { type: 'image/png' }), 'in.png');
    form.append('mask', new Blob([new Uint8Array(await halfMask())], { type: 'image/png' }), 'mask.png');
    const res = await fetch(`${daemon.url}/v1/images/edits`, { method: 'POST', body: form });
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, any>;
    expect(await firstPixel(body.data[0].b64_json)).toEqual(colourForSeed(9));

    const sent = generations()[0]!.json as Record<string, unknown>;
    expect(sent.model).toBe('Qwen/Qwen-Image-Edit-2509');
    expect(sent.image).toBe(`data:image/png;base64,${input.toString('base64')}`);
    expect(Object.keys(sent).filter((k) => k.includes('mask'))).toEqual([]);

    // Warnings are kept on the job result and in the log; the OpenAI response shape has no place for them.
    const job = await daemon.daemon.store.get(res.headers.get('x-job-id')!);
    expect(job!.result!.warnings).toEqual([expect.stringMatching(/^mask: this backend has no mask parameter/)]);
    const logged = daemon.logs.find((l) => l.message === 'siliconflow call answered');
    expect(logged!.warnings).toEqual([expect.stringMatching(/^mask: /)]);
  });

  it('n = 3: one call per image, each with its own seed', async () => {
    const daemon = await start();
    const { res, body } = await post(daemon.url, '/v1/images/generations', { model: 'kolors', prompt: 'three', n: 3, size: '256x256', seed: 100 });
    expect(res.status).toBe(200);
    expect(await Promise.all(body.data.map((d: { b64_json: string }) => firstPixel(d.b64_json)))).toEqual([
      colourForSeed(100),
      colourForSeed(101),
      colourForSeed(102),
    ]);
    expect(fake!.generationBodies().map((b) => [b.batch_size, b.seed])).toEqual([
      [1, 100],
      [1, 101],
      [1, 102],
    ]);
  });

  it('retries a 429 after its Retry-After and then succeeds', async () => {
    const daemon = await start();
    fake!.setNextFailures(1, { status: 429, code: 50603, message: 'Request was rejected due to rate limiting', headers: { 'retry-after': '1' } });
    const started = Date.now();
    const { res, body } = await post(daemon.url, '/v1/images/generations', { model: 'kolors', prompt: 'later', size: '256x256' });
    expect(res.status).toBe(200);
    expect(body.data).toHaveLength(1);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_000);
    expect(generations()).toHaveLength(2);
    expect(daemon.logs).toContainEqual(expect.objectContaining({ message: expect.stringMatching(/^attempt failed; will retry/), retryInMs: 1_000 }));
  });

  it('cancelling a running job aborts the upstream call: the fake sees the client go', async () => {
    const daemon = await start();
    fake!.setBehaviour({ hang: true });
    const { res, body } = await post(daemon.url, '/v1/images/generations?async=true', { model: 'kolors', prompt: 'slow', size: '256x256' });
    expect(res.status).toBe(202);
    await expect.poll(() => generations().length).toBe(1);
    const disconnected = fake!.nextDisconnect();
    const cancelled = await post(daemon.url, `/v1/jobs/${body.id}/cancel`, {});
    expect(cancelled.res.status).toBe(200);
    const gone = await disconnected;
    expect(gone.path).toBe('/v1/images/generations');
    expect((await daemon.daemon.store.get(String(body.id)))!.status).toBe('cancelled');
  });

  it('a backend that crashes mid-request is retried, then fails with upstream_error', async () => {
    const daemon = await start();
    fake!.setBehaviour({ dieMidRequest: true });
    const { res, body } = await post(daemon.url, '/v1/images/generations', { model: 'kolors', prompt: 'crash', size: '256x256' });
    expect(res.status).toBe(502);
    expect(body.error.code).toBe('upstream_error');
    expect(generations()).toHaveLength(3);
  });

  it('a backend that hangs fails with upstream_timeout at attemptTimeoutMs', async () => {
    const daemon = await start({}, { attemptTimeoutMs: 500 });
    fake!.setBehaviour({ hang: true });
    const disconnected = fake!.nextDisconnect();
    const { res, body } = await post(daemon.url, '/v1/images/generations', { model: 'kolors', prompt: 'hang', size: '256x256' });
    expect(res.status).toBe(504);
    expect(body.error.code).toBe('upstream_timeout');
    expect((await disconnected).path).toBe('/v1/images/generations');
  });

  it('an error body becomes a 502 with the backend’s message, not retried', async () => {
    const daemon = await start();
    const { res, body } = await post(daemon.url, '/v1/images/generations', { model: 'ghost', prompt: 'who', size: '256x256' });
    expect(res.status).toBe(502);
    expect(res.headers.get('x-should-retry')).toBe('false');
    expect(body.error).toMatchObject({ code: 'upstream_error', type: 'upstream_error' });
    expect(body.error.message).toContain('Model does not exist. Please check it carefully. (code 20012)');
    expect(generations()).toHaveLength(1);
    const traceId = generations()[0]!.traceId!;
    expect(daemon.logs).toContainEqual(expect.objectContaining({ message: expect.stringMatching(/^job failed/), details: expect.arrayContaining([`Trace-Id: ${traceId}`]) }));
  });

  it('a content-safety refusal is the caller’s 400 moderation_blocked', async () => {
    const daemon = await start();
    fake!.setNextFailures(1, { status: 400, code: 20015, message: 'The prompt contains sensitive content' });
    const { res, body } = await post(daemon.url, '/v1/images/generations', { model: 'kolors', prompt: 'blocked', size: '256x256' });
    expect(res.status).toBe(400);
    expect(body.error).toMatchObject({ code: 'moderation_blocked', type: 'image_generation_user_error' });
  });

  it('expired result URLs and URLs serving garbage fail the job with upstream_error', async () => {
    const daemon = await start({}, { maxTopUpCalls: 0 });
    fake!.setBehaviour({ urlTtlMs: 0 });
    const expired = await post(daemon.url, '/v1/images/generations', { model: 'kolors', prompt: 'late', size: '256x256' });
    expect(expired.res.status).toBe(502);
    expect(expired.body.error.message).toContain('expired');
    fake!.resetBehaviour();
    fake!.setBehaviour({ garbageUrls: true });
    const garbage = await post(daemon.url, '/v1/images/generations', { model: 'kolors', prompt: 'junk', size: '256x256' });
    expect(garbage.res.status).toBe(502);
    expect(garbage.body.error.code).toBe('upstream_error');
  });

  it('/readyz probes the API with the key: ready with the right one, 503 with a wrong one', async () => {
    const good = await start();
    const ready = await fetch(`${good.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(((await ready.json()) as Record<string, any>).backends).toEqual({ sf: 'ok' });
    expect(fake!.requests.find((r) => r.path === '/v1/models')!.headers.authorization).toBe(`Bearer ${KEY}`);

    const bad = await startDaemon({ apiKey: 'sk-wrong' });
    const notReady = await fetch(`${bad.url}/readyz`);
    expect(notReady.status).toBe(503);
    expect(((await notReady.json()) as Record<string, any>).backends.sf).toContain('HTTP 401');
  });
});
