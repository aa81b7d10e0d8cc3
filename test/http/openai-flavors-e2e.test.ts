import { createHash } from 'node:crypto';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { startFakeOpenAIServer, type FakeFlavor, type FakeOpenAIServer } from '../fakes/openai-compatible-server.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/**
 * Each OpenAI-compatible server's quirks (shared/spec/backends.md), reproduced by the fake, against the
 * daemon configured with that server's `flavor`: what the caller gets is what it asked for, or a warning
 * saying what was not honoured — never copies billed as images, never a silently dropped mask.
 */

let daemon: TestDaemon | undefined;
let fake: FakeOpenAIServer | undefined;
afterEach(async () => {
  await daemon?.close();
  await fake?.close();
  daemon = undefined;
  fake = undefined;
});

const PRICE = 1_000_000_000_000_000n;

async function start(flavor: FakeFlavor, backend: Record<string, unknown> = {}, jobs: ConfigInput['jobs'] = {}) {
  fake = await startFakeOpenAIServer({ flavor });
  daemon = await startTestDaemon({
    config: {
      backends: [{ id: 'gpu', type: 'openai', baseUrl: fake.url, ...backend } as ConfigInput['backends'][number]],
      models: [
        {
          id: 'flux',
          backend: 'gpu',
          backendModel: 'fake-image-model',
          capabilities: ['generation', 'edit'],
          sizes: ['256x256'],
          pricePerImageWei: PRICE.toString(),
        },
      ],
      jobs: { retryBackoffMs: 10, ...jobs },
    },
  });
  return daemon.url;
}

async function generate(url: string, body: Record<string, unknown>) {
  const res = await fetch(`${url}/v1/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'flux', size: '256x256', ...body }),
  });
  return { res, body: (await res.json()) as Record<string, any> };
}

/** The async poll body of a finished job (where warnings are shown). */
async function finished(url: string, body: Record<string, unknown>) {
  const submit = await fetch(`${url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'flux', size: '256x256', ...body }),
  });
  const submitted = (await submit.json()) as { jobId: string };
  if (submit.status !== 202) throw new Error(`submit answered ${submit.status}: ${JSON.stringify(submitted)}`);
  await daemon!.daemon.service.waitForEnd(submitted.jobId, 10_000);
  return (await (await fetch(`${url}/v1/async/jobs/${submitted.jobId}`)).json()) as Record<string, any>;
}

async function edit(url: string, fields: Record<string, string>, image: Buffer, mask?: Buffer) {
  const form = new FormData();
  for (const [k, v] of Object.entries({ model: 'flux', size: '256x256', ...fields })) form.append(k, v);
  form.append('image', new Blob([new Uint8Array(image)], { type: 'image/png' }), 'in.png');
  if (mask) form.append('mask', new Blob([new Uint8Array(mask)], { type: 'image/png' }), 'mask.png');
  const res = await fetch(`${url}/v1/images/edits`, { method: 'POST', body: form });
  return { res, body: (await res.json()) as Record<string, any> };
}

const sha = (b64: string) => createHash('sha256').update(Buffer.from(b64, 'base64')).digest('hex');
const solid = (colour: string, size = 256) => sharp({ create: { width: size, height: size, channels: 3, background: colour } }).png().toBuffer();
/** Left half alpha 0 (edit here), right half alpha 255 (keep). */
const halfMask = (size = 256) => {
  const rgba = Buffer.alloc(size * size * 4);
  for (let y = 0; y < size; y += 1) for (let x = size / 2; x < size; x += 1) rgba[(y * size + x) * 4 + 3] = 255;
  return sharp(rgba, { raw: { width: size, height: size, channels: 4 } }).png().toBuffer();
};
const receiptFee = async (jobId: string) => (await daemon!.daemon.billing.getReceipt(jobId))?.feeWei;

describe('flavor: vllm-omni', () => {
  it('asks for one image per call, each with its own seed, so n images are n pictures', async () => {
    const url = await start('vllm-omni', { flavor: 'vllm-omni' });
    const { res, body } = await generate(url, { prompt: 'two foxes', n: 2, seed: 7 });
    expect(res.status).toBe(200);
    const calls = fake!.requests.filter((r) => r.path.startsWith('/v1/images/generations')).map((r) => r.json as Record<string, unknown>);
    expect(calls.map((c) => [c.n, c.seed])).toEqual([
      [1, 7],
      [1, 8],
    ]);
    expect(new Set(body.data.map((d: { b64_json: string }) => sha(d.b64_json))).size).toBe(2);
  });
});

describe('flavor: localai', () => {
  it('generates one image per call, and sends the negative prompt after a | in the prompt', async () => {
    const url = await start('localai', { flavor: 'localai' });
    const { res, body } = await generate(url, { prompt: 'a castle', negative_prompt: 'fog', n: 2, seed: 3 });
    expect(res.status).toBe(200);
    const calls = fake!.requests.filter((r) => r.path.startsWith('/v1/images/generations')).map((r) => r.json as Record<string, unknown>);
    expect(calls).toHaveLength(2);
    expect(calls[0]).toMatchObject({ prompt: 'a castle|fog', n: 1, seed: 3 });
    expect(calls[0]).not.toHaveProperty('negative_prompt');
    expect(new Set(body.data.map((d: { b64_json: string }) => sha(d.b64_json))).size).toBe(2);
  });

  it('edits through /v1/images/inpainting with the mask as white = inpaint', async () => {
    const url = await start('localai', { flavor: 'localai' });
    const { res, body } = await edit(url, { prompt: 'paint the left half' }, await solid('#0000ff'), await halfMask());
    expect(res.status).toBe(200);
    expect(body.data).toHaveLength(1);
    const sent = fake!.requests.find((r) => r.path.startsWith('/v1/images/inpainting'))!;
    expect(sent.files!.map((f) => f.field)).toEqual(['image', 'mask']);
    const mask = await sharp(sent.files![1]!.bytes).raw().toBuffer({ resolveWithObject: true });
    const at = (x: number) => mask.data[x * mask.info.channels]!;
    expect(at(10)).toBe(255); // alpha 0 in the OpenAI mask → white: inpaint here
    expect(at(200)).toBe(0);
    expect(fake!.requests.some((r) => r.path.startsWith('/v1/images/edits'))).toBe(false);
  });

  it('an edit without a mask sends a white mask of the whole image: everything may change, as OpenAI means', async () => {
    const url = await start('localai', { flavor: 'localai' });
    const { res } = await edit(url, { prompt: 'make it night' }, await solid('#00ff00'));
    expect(res.status).toBe(200);
    const sent = fake!.requests.find((r) => r.path.startsWith('/v1/images/inpainting'))!;
    const mask = await sharp(sent.files![1]!.bytes).stats();
    expect(mask.channels[0]).toMatchObject({ min: 255, max: 255 });
  });

  it('configured as a generic server, its identical images are delivered and billed once; the job tops up', async () => {
    const url = await start('localai');
    const done = await finished(url, { prompt: 'twins', n: 2, seed: 11 });
    expect(done.status).toBe('completed');
    const images: Array<{ b64_json: string }> = done.data.data;
    expect(images).toHaveLength(2);
    expect(new Set(images.map((d) => sha(d.b64_json))).size).toBe(2);
    expect(done.warnings.join(' ')).toMatch(/byte-identical/);
    expect(await receiptFee(done.jobId)).toBe(2n * PRICE);
  });

  it('without top-up calls, fewer images are delivered — and billed — than copies were returned', async () => {
    const url = await start('localai', {}, { maxTopUpCalls: 0 });
    const done = await finished(url, { prompt: 'twins', n: 2, seed: 11 });
    expect(done.status).toBe('completed');
    expect(done.data.data).toHaveLength(1);
    expect(done.warnings.join(' ')).toMatch(/delivered 1 of 2/);
    expect(await receiptFee(done.jobId)).toBe(PRICE);
  });
});

describe('flavor: sglang', () => {
  it('does not send a mask it would ignore, and says so in the job’s warnings', async () => {
    const url = await start('sglang', { flavor: 'sglang' });
    const form = new FormData();
    for (const [k, v] of Object.entries({ model: 'flux', size: '256x256', prompt: 'left half only' })) form.append(k, v);
    form.append('image', new Blob([new Uint8Array(await solid('#ff0000'))], { type: 'image/png' }), 'in.png');
    form.append('mask', new Blob([new Uint8Array(await halfMask())], { type: 'image/png' }), 'mask.png');
    const submit = await fetch(`${url}/v1/async/images/edits`, { method: 'POST', body: form });
    const { jobId } = (await submit.json()) as { jobId: string };
    await daemon!.daemon.service.waitForEnd(jobId, 10_000);
    const done = (await (await fetch(`${url}/v1/async/jobs/${jobId}`)).json()) as Record<string, any>;
    expect(done.status).toBe('completed');
    expect(done.warnings.join(' ')).toMatch(/mask: the sglang server ignores masks/);
    const sent = fake!.requests.find((r) => r.path.startsWith('/v1/images/edits'))!;
    expect(sent.files!.map((f) => f.field)).toEqual(['image']);
  });
});

describe('flavor: openai', () => {
  it('leaves out the fields OpenAI refuses, with a warning for each one the caller set', async () => {
    const url = await start('openai', { flavor: 'openai' });
    const done = await finished(url, { prompt: 'a bridge', negative_prompt: 'people' });
    expect(done.status).toBe('completed');
    const sent = fake!.requests.find((r) => r.path.startsWith('/v1/images/generations'))!.json as Record<string, unknown>;
    for (const key of ['negative_prompt', 'seed', 'response_format']) expect(sent).not.toHaveProperty(key);
    expect(done.warnings).toEqual([expect.stringMatching(/^negative_prompt: the openai server takes no negative_prompt/)]);
  });
});
