import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { A1111_OOM_FAILURE, startFakeA1111Server, type FakeA1111Server } from '../fakes/a1111-server.js';
import { colourForSeed } from '../fakes/openai-compatible-server.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/** The daemon in front of a fake AUTOMATIC1111, driven through its public API only. */

let daemon: TestDaemon | undefined;
let fake: FakeA1111Server | undefined;
afterEach(async () => {
  await daemon?.close();
  await fake?.close();
  daemon = undefined;
  fake = undefined;
});

async function start(backend: Record<string, unknown> = {}, jobs: ConfigInput['jobs'] = {}) {
  fake = await startFakeA1111Server();
  daemon = await startTestDaemon({
    config: {
      backends: [{ id: 'sd', type: 'a1111', baseUrl: fake.url, progressPollMs: 50, steps: 20, ...backend } as ConfigInput['backends'][number]],
      models: [{ id: 'sd15', backend: 'sd', capabilities: ['generation', 'edit'], sizes: ['64x64', '128x128'], maxN: 4 }],
      jobs: { retryBackoffMs: 10, ...jobs },
    },
  });
  return daemon.url;
}

async function post(url: string, path: string, body: unknown) {
  const res = await fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { res, body: (await res.json()) as Record<string, any> };
}

async function get(url: string, path: string) {
  const res = await fetch(`${url}${path}`);
  return { res, body: (await res.json()) as Record<string, any> };
}

async function until<T>(probe: () => Promise<T | undefined> | T | undefined, what: string, timeoutMs = 10_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const imageCalls = () => fake!.requests.filter((r) => r.path === '/sdapi/v1/txt2img' || r.path === '/sdapi/v1/img2img');

async function pixelAt(b64: string, x: number, y: number): Promise<[number, number, number]> {
  const { data, info } = await sharp(Buffer.from(b64, 'base64')).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const i = (y * info.width + x) * info.channels;
  return [data[i]!, data[i + 1]!, data[i + 2]!];
}

describe('daemon in front of AUTOMATIC1111', () => {
  it('generates: txt2img with the model’s settings, the image painted from the job’s seed', async () => {
    const url = await start();
    const { res, body } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'a lighthouse', size: '64x64', seed: 5 });
    expect(res.status).toBe(200);
    expect(body.data).toHaveLength(1);
    expect(await pixelAt(body.data[0].b64_json, 10, 10)).toEqual(colourForSeed(5));
    expect(imageCalls()[0]!.json).toMatchObject({ prompt: 'a lighthouse', seed: 5, width: 64, height: 64, steps: 20, batch_size: 1, n_iter: 1 });
  });

  it('edits with a mask: the kept area is the input pixel for pixel, the masked area is regenerated', async () => {
    const url = await start();
    const photo = await sharp({ create: { width: 128, height: 128, channels: 3, background: '#204060' } }).png().toBuffer();
    // OpenAI convention: left half alpha 0 = edit here; right half opaque = keep.
    const raw = Buffer.alloc(128 * 128 * 4);
    for (let y = 0; y < 128; y += 1) for (let x = 64; x < 128; x += 1) raw[(y * 128 + x) * 4 + 3] = 255;
    const mask = await sharp(raw, { raw: { width: 128, height: 128, channels: 4 } }).png().toBuffer();
    const form = new FormData();
    for (const [k, v] of Object.entries({ model: 'sd15', prompt: 'a red door on the left', size: '128x128', seed: '21' })) form.append(k, v);
    form.append('image[]', new Blob([new Uint8Array(photo)], { type: 'image/png' }), 'photo.png');
    form.append('mask', new Blob([new Uint8Array(mask)], { type: 'image/png' }), 'mask.png');
    const res = await fetch(`${url}/v1/images/edits`, { method: 'POST', body: form });
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, any>;
    const out = body.data[0].b64_json as string;
    for (const [x, y] of [[100, 10], [120, 120], [80, 64]] as const) expect(await pixelAt(out, x, y)).toEqual([0x20, 0x40, 0x60]);
    const seedColour = colourForSeed(21);
    for (const [x, y] of [[8, 8], [30, 100], [48, 64]] as const) {
      const px = await pixelAt(out, x, y);
      expect(px).not.toEqual([0x20, 0x40, 0x60]);
      // Regenerated = input mixed 0.25/0.75 with the seed's colour.
      px.forEach((v, c) => expect(Math.abs(v - Math.round([0x20, 0x40, 0x60][c]! * 0.25 + seedColour[c]! * 0.75))).toBeLessThanOrEqual(1));
    }
    expect(imageCalls()[0]!.path).toBe('/sdapi/v1/img2img');
  });

  it('n > 1: one batch, each image on its own seed', async () => {
    const url = await start();
    const { res, body } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'three boats', size: '64x64', n: 3, seed: 1000 });
    expect(res.status).toBe(200);
    expect(body.data).toHaveLength(3);
    const colours = await Promise.all(body.data.map((d: { b64_json: string }) => pixelAt(d.b64_json, 1, 1)));
    expect(colours).toEqual([0, 1, 2].map((i) => colourForSeed(1000 + i)));
    expect(new Set(colours.map((c) => c.join(','))).size).toBe(3);
    expect(imageCalls()).toHaveLength(1);
    expect(imageCalls()[0]!.json).toMatchObject({ batch_size: 3, n_iter: 1, seed: 1000 });
    expect(fake!.tasks.size).toBe(1);
  });

  it('shows the backend’s progress in a poll while the job runs', async () => {
    const url = await start();
    fake!.setBehaviour({ stepMs: 40 });
    const { res, body } = await post(url, '/v1/async/images/generations', { model: 'sd15', prompt: 'slow', size: '64x64' });
    expect(res.status).toBe(202);
    const progress = await until(async () => {
      const poll = await get(url, `/v1/async/jobs/${body.jobId}`);
      return poll.body.status === 'processing' && typeof poll.body.progress === 'number' && poll.body.progress > 0 ? (poll.body.progress as number) : undefined;
    }, 'a poll with progress');
    expect(progress).toBeGreaterThan(0);
    expect(progress).toBeLessThan(100);
    await until(async () => ((await get(url, `/v1/async/jobs/${body.jobId}`)).body.status === 'completed' ? true : undefined), 'completion');
  });

  it('trims extra ControlNet images to exactly n and says so', async () => {
    const url = await start();
    fake!.setBehaviour({ extraImages: 2 });
    const { body } = await post(url, '/v1/async/images/generations', { model: 'sd15', prompt: 'with controlnet', size: '64x64', n: 2, seed: 40 });
    const done = await until(async () => {
      const poll = await get(url, `/v1/async/jobs/${body.jobId}?wait=5`);
      return poll.body.status === 'completed' ? poll.body : undefined;
    }, 'completion');
    expect(done.data.data).toHaveLength(2);
    expect(await pixelAt(done.data.data[1].b64_json, 0, 0)).toEqual(colourForSeed(41));
    expect(done.warnings).toEqual([expect.stringMatching(/returned 4 images for n=2 .*kept the first 2/)]);
  });

  it('cancel mid-run: interrupts the job’s own task on the backend and the job ends cancelled', async () => {
    const url = await start();
    fake!.setBehaviour({ hang: true });
    const started = fake!.nextTaskStarted();
    const { body } = await post(url, '/v1/async/images/generations', { model: 'sd15', prompt: 'never mind', size: '64x64' });
    const taskId = await started;
    const cancel = await post(url, `/v1/jobs/${body.jobId}/cancel`, {});
    expect(cancel.res.status).toBe(200);
    await until(() => (fake!.interrupts.length > 0 ? true : undefined), 'the interrupt');
    expect(fake!.interrupts).toEqual([{ atMs: expect.any(Number), activeTask: taskId }]);
    expect((imageCalls()[0]!.json as Record<string, unknown>).force_task_id).toBe(taskId);
    const job = await get(url, `/v1/jobs/${body.jobId}`);
    expect(job.body.status).toBe('cancelled');
    await until(() => (fake!.tasks.get(taskId)!.state === 'interrupted' ? true : undefined), 'the task to end');
    expect(imageCalls()).toHaveLength(1);
  });

  it('a backend that dies mid-request fails the job with upstream_error after the retries', async () => {
    const url = await start();
    fake!.setBehaviour({ dieMidRequest: true });
    const { res, body } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'crash', size: '64x64' });
    expect(res.status).toBe(502);
    expect(body.error.code).toBe('upstream_error');
    expect(body.error.message).toMatch(/unavailable/);
    expect(imageCalls()).toHaveLength(3);
    expect([...fake!.tasks.values()].every((t) => t.state === 'died')).toBe(true);
  });

  it('a backend that hangs past the attempt deadline gives upstream_timeout, and its task is interrupted', async () => {
    const url = await start({}, { attemptTimeoutMs: 500 });
    fake!.setBehaviour({ hang: true });
    const { res, body } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'hang', size: '64x64' });
    expect(res.status).toBe(504);
    expect(body.error.code).toBe('upstream_timeout');
    await until(() => (fake!.interrupts.length === 1 ? true : undefined), 'the interrupt');
    expect(imageCalls()).toHaveLength(1);
  });

  it('an A1111 error body fails the job with 502 and its sanitised message, at once for a 4xx', async () => {
    const url = await start({ samplerName: 'No Such Sampler' });
    const { res, body } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'x', size: '64x64' });
    expect(res.status).toBe(502);
    expect(body.error).toMatchObject({ code: 'upstream_error', message: 'the backend failed: Sampler not found' });
    expect(imageCalls()).toHaveLength(1);
  });

  it('an A1111 500 (out of memory) is retried, then fails with 502 and the exception text', async () => {
    const url = await start();
    fake!.setNextFailures(3, A1111_OOM_FAILURE);
    const { res, body } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'big', size: '64x64' });
    expect(res.status).toBe(502);
    expect(body.error.code).toBe('upstream_error');
    expect(body.error.message).toMatch(/OutOfMemoryError: CUDA out of memory/);
    expect(imageCalls()).toHaveLength(3);
  });

  it('reports the backend in /readyz, and 503 once it is gone', async () => {
    const url = await start();
    const ready = await get(url, '/readyz');
    expect(ready.res.status).toBe(200);
    expect(ready.body.backends).toEqual({ sd: 'ok' });
    expect(fake!.requests.some((r) => r.path === '/sdapi/v1/options')).toBe(true);
    await fake!.close();
    fake = undefined;
    await new Promise((r) => setTimeout(r, 5_100));
    const gone = await get(url, '/readyz');
    expect(gone.res.status).toBe(503);
    expect(gone.body.backends.sd).toMatch(/^failing: backend unreachable/);
  });
});
