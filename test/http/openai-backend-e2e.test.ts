import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { OPENAI_MODERATION_FAILURE, startFakeOpenAIServer, type FakeFlavor, type FakeOpenAIServer } from '../fakes/openai-compatible-server.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/** The daemon in front of each OpenAI-compatible server flavour, driven through its public API only. */

let daemon: TestDaemon | undefined;
let fake: FakeOpenAIServer | undefined;
afterEach(async () => {
  await daemon?.close();
  await fake?.close();
  daemon = undefined;
  fake = undefined;
});

async function start(flavor: FakeFlavor, backend: Record<string, unknown> = {}, jobs: ConfigInput['jobs'] = {}) {
  fake = await startFakeOpenAIServer({ flavor });
  daemon = await startTestDaemon({
    config: {
      backends: [{ id: 'gpu', type: 'openai', baseUrl: fake.url, concurrency: 2, ...backend } as ConfigInput['backends'][number]],
      models: [{ id: 'flux', backend: 'gpu', backendModel: 'fake-image-model', capabilities: ['generation', 'edit'], sizes: ['256x256', '512x512'] }],
      jobs: { retryBackoffMs: 10, ...jobs },
    },
  });
  return daemon.url;
}

async function post(url: string, path: string, body: unknown) {
  const res = await fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { res, body: (await res.json()) as Record<string, any> };
}

async function editForm(fields: Record<string, string>, images: Buffer[], mask?: Buffer) {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  for (const [i, image] of images.entries()) form.append('image[]', new Blob([new Uint8Array(image)], { type: 'image/png' }), `in${i}.png`);
  if (mask) form.append('mask', new Blob([new Uint8Array(mask)], { type: 'image/png' }), 'mask.png');
  return form;
}

const solid = (colour: string, size = 256) => sharp({ create: { width: size, height: size, channels: 3, background: colour } }).png().toBuffer();
/** Left half alpha 0 (edit here), right half alpha 255 (keep). */
const halfMask = (size = 256) => {
  const rgba = Buffer.alloc(size * size * 4);
  for (let y = 0; y < size; y += 1) for (let x = size / 2; x < size; x += 1) rgba[(y * size + x) * 4 + 3] = 255;
  return sharp(rgba, { raw: { width: size, height: size, channels: 4 } }).png().toBuffer();
};

describe('daemon in front of OpenAI-compatible servers', () => {
  it('SGLang: asks for b64 and maps backendModel, n and seed; delivers n PNGs', async () => {
    const url = await start('sglang');
    const { res, body } = await post(url, '/v1/images/generations', { model: 'flux', prompt: 'a lighthouse', n: 2, size: '256x256', seed: 42 });
    expect(res.status).toBe(200);
    expect(body.data).toHaveLength(2);
    const sent = fake!.requests.find((r) => r.path.startsWith('/v1/images/generations'))!.json as Record<string, unknown>;
    expect(sent).toMatchObject({ model: 'fake-image-model', prompt: 'a lighthouse', n: 2, size: '256x256', seed: 42, response_format: 'b64_json' });
    const meta = await sharp(Buffer.from(body.data[0].b64_json, 'base64')).metadata();
    expect(meta).toMatchObject({ format: 'png', width: 256, height: 256 });
  });

  it('SGLang with url results: downloads them at once and serves the bytes itself', async () => {
    const url = await start('sglang', { requestB64: false });
    const { res, body } = await post(url, '/v1/images/generations', { model: 'flux', prompt: 'url please', size: '256x256' });
    expect(res.status).toBe(200);
    expect(body.data[0].b64_json).toBeDefined();
    expect(fake!.requests.some((r) => r.method === 'GET' && !r.path.startsWith('/v1/images/generations'))).toBe(true);
  });

  it('vLLM-Omni: edits send image[] and the mask as mask_image with white = inpaint', async () => {
    const url = await start('vllm-omni', { editMaskField: 'mask_image', maskConvention: 'white-inpaint' });
    const form = await editForm({ model: 'flux', prompt: 'paint the left half', size: '256x256' }, [await solid('#ff0000'), await solid('#00ff00')], await halfMask());
    const res = await fetch(`${url}/v1/images/edits`, { method: 'POST', body: form });
    expect(res.status).toBe(200);
    const sent = fake!.requests.find((r) => r.path.startsWith('/v1/images/edits'))!;
    expect(sent.files!.map((f) => f.field)).toEqual(['image[]', 'image[]', 'mask_image']);
    const maskPixels = await sharp(sent.files![2]!.bytes).raw().toBuffer({ resolveWithObject: true });
    const at = (x: number) => maskPixels.data[x * maskPixels.info.channels]!;
    expect(at(10)).toBe(255); // alpha 0 in the OpenAI mask → white: inpaint here
    expect(at(200)).toBe(0);
  });

  it('LocalAI: a backend 404 on edits fails the job with upstream_error and the backend message', async () => {
    const url = await start('localai');
    const form = await editForm({ model: 'flux', prompt: 'edit', size: '256x256' }, [await solid('#0000ff')]);
    const res = await fetch(`${url}/v1/images/edits`, { method: 'POST', body: form });
    expect(res.status).toBe(502);
    const body = (await res.json()) as Record<string, any>;
    expect(body.error.code).toBe('upstream_error');
    expect(res.headers.get('x-should-retry')).toBe('false');
  });

  it('retries 503s from the backend and then succeeds', async () => {
    const url = await start('openai');
    fake!.setNextFailures(2, { status: 503, message: 'model loading' });
    const { res, body } = await post(url, '/v1/images/generations', { model: 'flux', prompt: 'eventually', size: '256x256' });
    expect(res.status).toBe(200);
    expect(body.data).toHaveLength(1);
    expect(fake!.requests.filter((r) => r.path.startsWith('/v1/images/generations'))).toHaveLength(3);
  });

  it('maps a backend moderation block to the caller’s 400 moderation_blocked', async () => {
    const url = await start('openai');
    fake!.setNextFailures(1, OPENAI_MODERATION_FAILURE);
    const { res, body } = await post(url, '/v1/images/generations', { model: 'flux', prompt: 'blocked', size: '256x256' });
    expect(res.status).toBe(400);
    expect(body.error).toMatchObject({ code: 'moderation_blocked', type: 'image_generation_user_error' });
  });

  it('fails a backend that returns garbage, and one that hangs past the deadline', async () => {
    const url = await start('openai', {}, { attemptTimeoutMs: 500, maxTopUpCalls: 0 });
    fake!.setBehaviour({ garbageB64: true });
    const garbage = await post(url, '/v1/images/generations', { model: 'flux', prompt: 'junk', size: '256x256' });
    expect(garbage.res.status).toBe(502);
    fake!.resetBehaviour();
    fake!.setBehaviour({ hang: true });
    const hung = await post(url, '/v1/images/generations', { model: 'flux', prompt: 'hang', size: '256x256' });
    expect(hung.res.status).toBe(504);
    expect(hung.body.error.code).toBe('upstream_timeout');
  });

  it('reports the backend in /readyz, and 503 once it is gone', async () => {
    const url = await start('openai');
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
    await fake!.close();
    fake = undefined;
    await new Promise((r) => setTimeout(r, 5_100));
    const res = await fetch(`${url}/readyz`);
    expect(res.status).toBe(503);
  });
});
