import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { fakeSampleColour, startFakeComfyUI, type FakeComfyUI, type FakeComfyUIOptions } from '../fakes/comfyui-server.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/** The daemon in front of a ComfyUI (the fake), driven through its public API only, on the shipped workflows. */

const TXT2IMG = fileURLToPath(new URL('../../config/comfyui/txt2img.json', import.meta.url));
const INPAINT = fileURLToPath(new URL('../../config/comfyui/inpaint.json', import.meta.url));
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

let dir: string;
let batchWorkflow: string;
let badCheckpointWorkflow: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pixeld-comfy-e2e-'));
  const base = JSON.parse(await readFile(TXT2IMG, 'utf8')) as Record<string, { inputs: Record<string, unknown>; _meta?: { title?: string } }>;
  const batch = structuredClone(base);
  batch['5']!._meta = { title: 'Empty Latent Image [pixeld:size pixeld:batch_size]' };
  batchWorkflow = join(dir, 'batch.json');
  await writeFile(batchWorkflow, JSON.stringify(batch));
  const bad = structuredClone(base);
  bad['4']!.inputs.ckpt_name = 'not-installed.safetensors';
  badCheckpointWorkflow = join(dir, 'bad-checkpoint.json');
  await writeFile(badCheckpointWorkflow, JSON.stringify(bad));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let daemon: TestDaemon | undefined;
let fake: FakeComfyUI | undefined;
afterEach(async () => {
  await daemon?.close();
  await fake?.close();
  daemon = undefined;
  fake = undefined;
});

async function start(options: { fake?: FakeComfyUIOptions; backend?: Record<string, unknown>; jobs?: ConfigInput['jobs']; baseUrl?: string } = {}) {
  fake = await startFakeComfyUI(options.fake);
  daemon = await startTestDaemon({
    config: {
      backends: [
        {
          id: 'comfy',
          type: 'comfyui',
          baseUrl: options.baseUrl ?? fake.url,
          pollIntervalMs: 50,
          // Far beyond the test timeout: only polling (not the safety re-check) can rescue a dropped socket.
          reconcileIntervalMs: 120_000,
          workflows: { sd15: TXT2IMG, 'sd15-inpaint': INPAINT, 'sd15-batch': batchWorkflow, broken: badCheckpointWorkflow },
          ...options.backend,
        } as ConfigInput['backends'][number],
      ],
      models: [
        { id: 'sd15', backend: 'comfy', capabilities: ['generation'], sizes: ['256x256', '320x192'], extensions: ['seed', 'negative_prompt'] },
        { id: 'sd15-inpaint', backend: 'comfy', capabilities: ['edit'], sizes: ['256x256'], extensions: ['seed'] },
        { id: 'sd15-batch', backend: 'comfy', capabilities: ['generation'], sizes: ['256x256'], extensions: ['seed'] },
        { id: 'broken', backend: 'comfy', capabilities: ['generation'], sizes: ['256x256'] },
      ],
      jobs: { retryBackoffMs: 10, ...options.jobs },
    },
  });
  return { url: daemon.url, fake };
}

async function post(url: string, path: string, body: unknown) {
  const res = await fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { res, body: (await res.json()) as Record<string, any> };
}

async function poll(url: string, id: string) {
  return (await (await fetch(`${url}/v1/async/jobs/${id}`)).json()) as Record<string, any>;
}

async function until<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 10_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function pixel(b64: string, x: number, y: number): Promise<number[]> {
  const { data, info } = await sharp(Buffer.from(b64, 'base64')).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const i = (y * info.width + x) * info.channels;
  return [data[i]!, data[i + 1]!, data[i + 2]!];
}

function historyOrJobPolls(f: FakeComfyUI, promptId: string): string[] {
  return f.requests.filter((r) => r.method === 'GET' && (r.path === `/api/jobs/${promptId}` || r.path === `/history/${promptId}`)).map((r) => r.path);
}

describe('daemon in front of ComfyUI', () => {
  it('generates: maps prompt, seed and size into the workflow, follows the socket, returns the PNG', async () => {
    const { url, fake } = await start();
    const { res, body } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'a lighthouse', negative_prompt: 'fog', size: '320x192', seed: 42 });
    expect(res.status).toBe(200);
    expect(body.data).toHaveLength(1);
    const meta = await sharp(Buffer.from(body.data[0].b64_json, 'base64')).metadata();
    expect(meta).toMatchObject({ format: 'png', width: 320, height: 192 });
    expect(await pixel(body.data[0].b64_json, 5, 5)).toEqual(fakeSampleColour(42));

    expect(fake.prompts).toHaveLength(1);
    const sent = fake.prompts[0]!;
    expect(sent.id).toMatch(UUID);
    expect(sent.clientId).toMatch(/^pixeld-/);
    expect(sent.prompt['6']!.inputs.text).toBe('a lighthouse');
    expect(sent.prompt['7']!.inputs.text).toBe('fog');
    expect(sent.prompt['3']!.inputs.seed).toBe(42);
    expect(sent.prompt['5']!.inputs).toMatchObject({ width: 320, height: 192, batch_size: 1 });
    // The socket carried the run: progress went to our client id, and no state polling was needed.
    expect(fake.socketsOpened()).toBeGreaterThanOrEqual(1);
    expect(fake.events.some((e) => e.type === 'progress' && e.clientId === sent.clientId)).toBe(true);
    expect(fake.requests.some((r) => r.path === '/history')).toBe(false);
    expect(fake.requests.filter((r) => r.path.startsWith('/view?'))).toHaveLength(1);
  });

  it('edits with image and mask: the masked area changes, the rest is kept, pixel for pixel', async () => {
    const { url, fake } = await start();
    const size = 256;
    const input = await sharp({ create: { width: size, height: size, channels: 3, background: { r: 200, g: 20, b: 20 } } }).png().toBuffer();
    // OpenAI convention: alpha 0 on the left half (edit there), opaque on the right (keep).
    const rgba = Buffer.alloc(size * size * 4);
    for (let y = 0; y < size; y += 1) for (let x = size / 2; x < size; x += 1) rgba[(y * size + x) * 4 + 3] = 255;
    const mask = await sharp(rgba, { raw: { width: size, height: size, channels: 4 } }).png().toBuffer();
    const form = new FormData();
    form.append('model', 'sd15-inpaint');
    form.append('prompt', 'a blue door');
    form.append('size', '256x256');
    form.append('seed', '7');
    form.append('image[]', new Blob([new Uint8Array(input)], { type: 'image/png' }), 'in.png');
    form.append('mask', new Blob([new Uint8Array(mask)], { type: 'image/png' }), 'mask.png');
    const res = await fetch(`${url}/v1/images/edits`, { method: 'POST', body: form });
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, any>;
    const b64 = body.data[0].b64_json as string;
    const edited = fakeSampleColour(7);
    for (const [x, y] of [[0, 0], [10, 200], [size / 2 - 1, 128]] as const) expect(await pixel(b64, x, y)).toEqual(edited);
    for (const [x, y] of [[size / 2, 0], [200, 10], [size - 1, size - 1]] as const) expect(await pixel(b64, x, y)).toEqual([200, 20, 20]);

    const sent = fake.prompts[0]!.prompt;
    expect(sent['11']!.inputs.channel).toBe('red');
    // LoadImage names a file as "<subfolder>/<name>" inside ComfyUI's input directory.
    const maskFile = fake.files.get(`input/${String(sent['11']!.inputs.image)}`)!;
    expect(maskFile.subfolder).toBe('pixeld');
    expect((await sharp(maskFile.bytes).metadata()).channels).toBe(1);
    const data = await sharp(maskFile.bytes).extractChannel(0).raw().toBuffer();
    expect(data[0]).toBe(255); // left: white = inpaint
    expect(data[size - 1]).toBe(0); // right: black = keep
    const upload = fake.requests.find((r) => r.path === '/upload/image')!;
    expect(upload.fields).toMatchObject({ type: 'input', subfolder: 'pixeld', overwrite: 'true' });
  });

  it('n > 1 without a batch marker: one prompt per image on seed + i, each its own prompt_id', async () => {
    const { url, fake } = await start();
    const { res, body } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'three', n: 3, size: '256x256', seed: 1000 });
    expect(res.status).toBe(200);
    expect(body.data).toHaveLength(3);
    for (let i = 0; i < 3; i += 1) expect(await pixel(body.data[i].b64_json, 1, 1)).toEqual(fakeSampleColour(1000 + i));
    expect(fake.prompts.map((p) => p.prompt['3']!.inputs.seed)).toEqual([1000, 1001, 1002]);
    expect(new Set(fake.prompts.map((p) => p.id)).size).toBe(3);
  });

  it('n > 1 with a batch marker: one prompt with batch_size n, and the shared seed is reported', async () => {
    const { url, fake } = await start();
    const submit = await post(url, '/v1/async/images/generations', { model: 'sd15-batch', prompt: 'two', n: 2, size: '256x256', seed: 5 });
    expect(submit.res.status).toBe(202);
    const done = await until('the batch job', async () => {
      const b = await poll(url, submit.body.jobId);
      return b.status === 'completed' ? b : undefined;
    });
    expect(fake.prompts).toHaveLength(1);
    expect(fake.prompts[0]!.prompt['5']!.inputs.batch_size).toBe(2);
    expect(done.data.data).toHaveLength(2);
    expect(await pixel(done.data.data[0].b64_json, 0, 0)).toEqual(fakeSampleColour(5, 0));
    expect(await pixel(done.data.data[1].b64_json, 0, 0)).toEqual(fakeSampleColour(5, 1));
    expect(done.warnings).toEqual([expect.stringMatching(/^seed: .*one ComfyUI batch on seed 5/)]);
  });

  it('shows progress in polls while the prompt runs', async () => {
    const { url, fake } = await start();
    fake.setBehaviour({ runMs: 1_500 });
    const submit = await post(url, '/v1/async/images/generations', { model: 'sd15', prompt: 'slow', size: '256x256' });
    const running = await until('a poll with progress', async () => {
      const b = await poll(url, submit.body.jobId);
      return b.status === 'processing' && typeof b.progress === 'number' && b.progress > 0 ? b : undefined;
    });
    expect(running.progress).toBeLessThan(100);
    await until('completion', async () => (await poll(url, submit.body.jobId)).status === 'completed');
  });

  it('cancel mid-run interrupts exactly our prompt by prompt_id, never with a bare interrupt', async () => {
    const { url, fake } = await start();
    fake.setBehaviour({ runMs: 10_000 });
    const started = fake.nextStart();
    const submit = await post(url, '/v1/async/images/generations', { model: 'sd15', prompt: 'cancel me', size: '256x256' });
    const promptId = await started;
    const ended = fake.nextEnd();
    const cancel = await post(url, `/v1/async/jobs/${submit.body.jobId}/cancel`, {});
    expect(cancel.res.status).toBe(200);
    expect(await ended).toBe(promptId);
    expect(fake.interrupts).toEqual([promptId]);
    expect(fake.deletes).toEqual([promptId]);
    expect(fake.events.some((e) => e.type === 'execution_interrupted' && e.data.prompt_id === promptId)).toBe(true);
    const body = await poll(url, submit.body.jobId);
    expect(body.status).toBe('failed');
    expect(body.errorCode).toBe('job_cancelled');
  });

  it('cancel while still queued in ComfyUI deletes it from the queue and interrupts nothing', async () => {
    const { url, fake } = await start();
    fake.setBehaviour({ paused: true });
    const submit = await post(url, '/v1/async/images/generations', { model: 'sd15', prompt: 'queued', size: '256x256' });
    const promptId = await until('the prompt to be queued', () => fake.prompts[0]?.id);
    await post(url, `/v1/async/jobs/${submit.body.jobId}/cancel`, {});
    await until('the queue delete', () => fake.deletes.includes(promptId));
    expect(fake.queueState().pending).toEqual([]);
    fake.setBehaviour({ paused: false });
    await new Promise((r) => setTimeout(r, 100));
    expect(fake.interrupts).toEqual([]);
    expect(fake.events.some((e) => e.type === 'execution_start' && e.data.prompt_id === promptId)).toBe(false);
  });

  it('a websocket dropped mid-job (and refused after): the job completes by polling /api/jobs/{id}', async () => {
    const { url, fake } = await start();
    fake.setBehaviour({ runMs: 600, dropSocketsMidJob: true, refuseWebSockets: true });
    const { res, body } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'dropped', size: '256x256', seed: 3 });
    expect(res.status).toBe(200);
    expect(await pixel(body.data[0].b64_json, 0, 0)).toEqual(fakeSampleColour(3));
    const promptId = fake.prompts[0]!.id;
    expect(historyOrJobPolls(fake, promptId)).toContain(`/api/jobs/${promptId}`);
    // Reconnection was tried while polling.
    expect(fake.requests.filter((r) => r.method === 'UPGRADE').length).toBeGreaterThan(1);
    expect(fake.requests.some((r) => r.path === '/history')).toBe(false);
  });

  it('on ComfyUI without /api/jobs, a dropped socket falls back to /history/{id} + /queue, and reconciles on reconnect', async () => {
    const { url, fake } = await start({ fake: { jobsApi: false } });
    fake.setBehaviour({ runMs: 600, dropSocketsMidJob: true });
    const { res } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'old comfy', size: '256x256' });
    expect(res.status).toBe(200);
    const promptId = fake.prompts[0]!.id;
    expect(historyOrJobPolls(fake, promptId)).toContain(`/history/${promptId}`);
    expect(fake.socketsOpened()).toBeGreaterThanOrEqual(2);
    expect(fake.requests.some((r) => r.path === '/history')).toBe(false);
  });

  it('a ComfyUI that dies mid-job fails the job with upstream_error after the runner’s retries', async () => {
    const { url, fake } = await start({ jobs: { maxAttempts: 2 } });
    fake.setBehaviour({ runMs: 400, dieMidJob: true });
    const { res, body } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'crash', size: '256x256' });
    expect(res.status).toBe(502);
    expect(body.error.code).toBe('upstream_error');
    expect(body.error.message).toMatch(/unavailable/);
    expect(fake.prompts).toHaveLength(1);
    const retried = daemon!.logs.filter((l) => String(l.message).startsWith('attempt failed; will retry'));
    expect(retried).toHaveLength(1);
    expect(retried[0]!.code).toBe('upstream_error');
  });

  it('a workflow ComfyUI refuses gives 502 upstream_error naming the node and the problem', async () => {
    const { url, fake } = await start();
    const { res, body } = await post(url, '/v1/images/generations', { model: 'broken', prompt: 'x', size: '256x256' });
    expect(res.status).toBe(502);
    expect(body.error.code).toBe('upstream_error');
    expect(body.error.message).toMatch(/node 4 "Load Checkpoint" \(CheckpointLoaderSimple\): Value not in list: ckpt_name: 'not-installed\.safetensors'/);
    expect(fake.prompts).toHaveLength(0);
    expect(fake.requests.filter((r) => r.path === '/prompt')).toHaveLength(1);
  });

  it('an execution_error gives 502 upstream_error with the node type and the exception, not retried', async () => {
    const { url, fake } = await start();
    fake.setBehaviour({ executionError: { exceptionType: 'RuntimeError', message: 'Expected all tensors to be on the same device' } });
    const { res, body } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'x', size: '256x256' });
    expect(res.status).toBe(502);
    expect(body.error.message).toMatch(/ComfyUI failed in node 3 .*\(KSampler\): RuntimeError: Expected all tensors to be on the same device/);
    expect(fake.prompts).toHaveLength(1);
  });

  it('a prompt that outlives attemptTimeoutMs gives 504 upstream_timeout, and the prompt is interrupted', async () => {
    const { url, fake } = await start({ jobs: { attemptTimeoutMs: 800 } });
    fake.setBehaviour({ hang: true });
    const { res, body } = await post(url, '/v1/images/generations', { model: 'sd15', prompt: 'forever', size: '256x256' });
    expect(res.status).toBe(504);
    expect(body.error.code).toBe('upstream_timeout');
    const promptId = fake.prompts[0]!.id;
    await until('the interrupt', () => fake.interrupts.includes(promptId));
    expect(fake.interrupts.every((id) => id !== undefined)).toBe(true);
  });

  it('/readyz reports the backend from healthPath', async () => {
    const { url, fake } = await start();
    const res = await fetch(`${url}/readyz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ ready: true, backends: { comfy: 'ok' } });
    expect(fake.requests.some((r) => r.path === '/system_stats')).toBe(true);
  });

  it('/readyz is 503 with the reason when ComfyUI cannot be reached', async () => {
    const { url } = await start({ baseUrl: 'http://127.0.0.1:9' });
    const res = await fetch(`${url}/readyz`);
    expect(res.status).toBe(503);
    const body = (await res.json()) as Record<string, any>;
    expect(body.backends.comfy).toMatch(/^failing: ComfyUI unreachable/);
  });
});
