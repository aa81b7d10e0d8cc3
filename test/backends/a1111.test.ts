import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  basicAuthHeader,
  callWarnings,
  createA1111Backend,
  extractA1111Error,
  parseA1111Response,
  requestTimeouts,
  toImg2ImgBody,
  toTaskState,
  toTxt2ImgBody,
} from '../../src/backends/a1111.js';
import { BackendError } from '../../src/backends/errors.js';
import type { BackendCallOptions, ImageBackend, InputImage } from '../../src/backends/types.js';
import { a1111BackendSchema, type A1111BackendConfig, type ConfigInput } from '../../src/config/schema.js';
import { silentLogger } from '../../src/obs/logger.js';
import { A1111_OOM_FAILURE, startFakeA1111Server, type FakeA1111Server, type FakeA1111ServerOptions } from '../fakes/a1111-server.js';
import { colourForSeed } from '../fakes/openai-compatible-server.js';
import { backendCallOptions } from '../helpers/backend-call.js';

type A1111ConfigInput = Omit<Extract<ConfigInput['backends'][number], { type: 'a1111' }>, 'type' | 'id' | 'baseUrl'>;

function makeConfig(baseUrl = 'http://127.0.0.1:7860', extra: A1111ConfigInput = {}): A1111BackendConfig {
  return a1111BackendSchema.parse({ id: 'sd', type: 'a1111', baseUrl, ...extra });
}

function callOptions(overrides: Partial<BackendCallOptions> = {}): BackendCallOptions {
  return backendCallOptions({ model: 'sd15', prompt: 'a red fox in snow', size: '64x48', ...overrides });
}

const png = (colour: string, width = 64, height = 48) =>
  sharp({ create: { width, height, channels: 3, background: colour } }).png().toBuffer();

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected the promise to reject');
}

async function backendError(promise: Promise<unknown>): Promise<BackendError> {
  const err = await rejection(promise);
  expect(err).toBeInstanceOf(BackendError);
  return err as BackendError;
}

async function pixelAt(bytes: Uint8Array, x: number, y: number): Promise<[number, number, number]> {
  const { data, info } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const i = (y * info.width + x) * info.channels;
  return [data[i]!, data[i + 1]!, data[i + 2]!];
}

async function until(check: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

let dir: string;
let photo: InputImage;
let second: InputImage;
let mask: InputImage;

async function writeInput(name: string, bytes: Buffer, mediaType: InputImage['mediaType']): Promise<InputImage> {
  const path = join(dir, name);
  await writeFile(path, bytes);
  const meta = await sharp(bytes).metadata();
  return { path, mediaType, width: meta.width!, height: meta.height!, sha256: createHash('sha256').update(bytes).digest('hex') };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pixeld-a1111-test-'));
  photo = await writeInput('photo.png', await png('#204060'), 'image/png');
  second = await writeInput('second.png', await png('#ffffff'), 'image/png');
  // OpenAI convention: left half alpha 0 (edit), right half alpha 255 (keep).
  const raw = Buffer.alloc(64 * 48 * 4);
  for (let y = 0; y < 48; y += 1) for (let x = 32; x < 64; x += 1) raw[(y * 64 + x) * 4 + 3] = 255;
  mask = await writeInput('mask.png', await sharp(raw, { raw: { width: 64, height: 48, channels: 4 } }).png().toBuffer(), 'image/png');
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('toTxt2ImgBody', () => {
  it('maps every option, with n as one batch and the config defaults for unset steps and guidance', () => {
    const body = toTxt2ImgBody(callOptions({ n: 3, seed: 77 }), makeConfig(), 'task(x)');
    expect(body).toEqual({
      prompt: 'a red fox in snow',
      negative_prompt: '',
      seed: 77,
      width: 64,
      height: 48,
      steps: 30,
      cfg_scale: 7,
      sampler_name: 'Euler a',
      batch_size: 3,
      n_iter: 1,
      force_task_id: 'task(x)',
      send_images: true,
      save_images: false,
    });
  });

  it('prefers the caller’s steps, guidance and negative prompt over the config', () => {
    const body = toTxt2ImgBody(
      callOptions({ numInferenceSteps: 12, guidanceScale: 3.5, negativePrompt: 'blurry' }),
      makeConfig(undefined, { steps: 40, cfgScale: 9, samplerName: 'DPM++ 2M' }),
      't',
    );
    expect(body).toMatchObject({ steps: 12, cfg_scale: 3.5, negative_prompt: 'blurry', sampler_name: 'DPM++ 2M' });
  });

  it('switches the checkpoint to the model only with sendCheckpoint, and keeps it loaded afterwards', () => {
    expect(toTxt2ImgBody(callOptions(), makeConfig(), 't')).not.toHaveProperty('override_settings');
    expect(toTxt2ImgBody(callOptions({ model: 'sdxl_base.safetensors' }), makeConfig(undefined, { sendCheckpoint: true }), 't')).toMatchObject({
      override_settings: { sd_model_checkpoint: 'sdxl_base.safetensors' },
      override_settings_restore_afterwards: false,
    });
  });
});

describe('toImg2ImgBody', () => {
  const config = makeConfig(undefined, { denoisingStrength: 0.6, maskBlur: 2, inpaintingFill: 3, resizeMode: 1 });

  it('sends one init image and the already-converted mask with inpainting_mask_invert 0', () => {
    const body = toImg2ImgBody(callOptions({ n: 2 }), config, 'task(y)', { initImageB64: 'AAAA', maskB64: 'BBBB' });
    expect(body).toMatchObject({
      init_images: ['AAAA'],
      mask: 'BBBB',
      inpainting_mask_invert: 0,
      mask_blur: 2,
      inpainting_fill: 3,
      resize_mode: 1,
      denoising_strength: 0.6,
      include_init_images: false,
      batch_size: 2,
      n_iter: 1,
      force_task_id: 'task(y)',
    });
  });

  it('leaves the inpainting keys out of a plain img2img without a mask', () => {
    const body = toImg2ImgBody(callOptions(), config, 't', { initImageB64: 'AAAA', maskB64: undefined });
    for (const key of ['mask', 'inpainting_mask_invert', 'mask_blur', 'inpainting_fill']) expect(body).not.toHaveProperty(key);
    expect(body.init_images).toEqual(['AAAA']);
  });
});

describe('callWarnings', () => {
  it('reports unsent extra input images and a transparent background; nothing for a plain call', () => {
    expect(callWarnings(callOptions())).toEqual([]);
    const warnings = callWarnings(callOptions({ images: [photo, second, second], background: 'transparent' }));
    expect(warnings.map((w) => w.feature)).toEqual(['images', 'background']);
    expect(warnings[0]!.message).toMatch(/2 further input images were not used/);
  });
});

describe('parseA1111Response', () => {
  const b64 = (bytes: Buffer) => bytes.toString('base64');
  const info = (extra: Record<string, unknown>) => JSON.stringify({ seed: 10, all_seeds: [10, 11], index_of_first_image: 0, ...extra });

  it('accepts seed..seed+n-1 without warnings and returns the decoded bytes', async () => {
    const a = await png('#ff0000');
    const result = parseA1111Response({ images: [b64(a), b64(a)], parameters: {}, info: info({ sd_model_name: 'v1-5' }) }, { n: 2, seed: 10 });
    expect(result).toMatchObject({ ok: true, warnings: [], modelName: 'v1-5' });
    if (result.ok) expect(Buffer.from(result.images[0]!).equals(a)).toBe(true);
  });

  it('keeps the first n images and says so when extensions append more (ControlNet maps)', async () => {
    const images = await Promise.all(['#100000', '#200000', '#808080'].map((c) => png(c)));
    const result = parseA1111Response({ images: images.map(b64), info: info({}) }, { n: 2, seed: 10 });
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.images).toHaveLength(2);
    expect(Buffer.from(result.images[1]!).equals(images[1]!)).toBe(true);
    expect(result.warnings).toEqual([expect.objectContaining({ message: expect.stringMatching(/returned 3 images for n=2 .*; kept the first 2$/) })]);
  });

  it('skips a leading grid named by index_of_first_image', async () => {
    const [grid, a, b] = await Promise.all(['#ffffff', '#010101', '#020202'].map((c) => png(c)));
    const result = parseA1111Response({ images: [grid, a, b].map((x) => b64(x!)), info: info({ index_of_first_image: 1 }) }, { n: 2, seed: 10 });
    expect(result.ok && result.images.map((i) => Buffer.from(i).equals(a!))).toEqual([true, false]);
  });

  it('warns when the reported seeds are not seed + i', async () => {
    const a = b64(await png('#000000'));
    const same = parseA1111Response({ images: [a, a], info: info({ all_seeds: [10, 10] }) }, { n: 2, seed: 10 });
    expect(same.ok && same.warnings).toEqual([{ type: 'other', feature: 'seed', message: 'backend used seeds 10, 10 instead of 10, 11' }]);
    const missing = parseA1111Response({ images: [a], info: 'not json' }, { n: 1, seed: 10 });
    expect(missing.ok && missing.warnings.map((w) => w.feature)).toEqual(['seed']);
  });

  it('accepts data URLs and refuses empty, missing or non-base64 images', async () => {
    const a = await png('#000000');
    expect(parseA1111Response({ images: [`data:image/png;base64,${b64(a)}`], info: info({ all_seeds: [10] }) }, { n: 1, seed: 10 }).ok).toBe(true);
    expect(parseA1111Response({ images: [], info: info({}) }, { n: 1, seed: 10 })).toEqual({ ok: false, message: 'backend answered 200 without images' });
    expect(parseA1111Response({ info: info({}) }, { n: 1, seed: 10 }).ok).toBe(false);
    expect(parseA1111Response({ images: ['!!!'], info: info({}) }, { n: 1, seed: 10 })).toEqual({ ok: false, message: 'images[0] is not a base64 image' });
    expect(parseA1111Response({ images: [42], info: info({}) }, { n: 1, seed: 10 }).ok).toBe(false);
  });
});

describe('extractA1111Error', () => {
  it('reads the detail of an HTTPException and the class and text of other exceptions', () => {
    expect(extractA1111Error(JSON.stringify({ error: 'HTTPException', detail: 'Sampler not found', body: '', errors: '404: Sampler not found' }))).toBe(
      'Sampler not found',
    );
    expect(extractA1111Error(JSON.stringify({ error: 'OutOfMemoryError', detail: '', body: '', errors: 'CUDA out of memory.' }))).toBe(
      'OutOfMemoryError: CUDA out of memory.',
    );
    expect(extractA1111Error(JSON.stringify({ error: 'RuntimeError', detail: '', body: '', errors: '' }))).toBe('RuntimeError');
  });

  it('never shows the body key, which echoes the request', () => {
    const message = extractA1111Error(JSON.stringify({ error: 'ValueError', detail: '', body: 'SECRET PROMPT', errors: 'bad value' }));
    expect(message).toBe('ValueError: bad value');
    expect(message).not.toContain('SECRET');
  });

  it('reads FastAPI validation errors and plain text', () => {
    const body = { detail: [{ loc: ['body', 'width'], msg: 'value is not a valid integer', type: 'type_error.integer' }] };
    expect(extractA1111Error(JSON.stringify(body))).toBe('width: value is not a valid integer');
    expect(extractA1111Error('Internal Server Error')).toBe('Internal Server Error');
    expect(extractA1111Error('')).toBeUndefined();
  });
});

describe('requestTimeouts', () => {
  it('runs past the deadline by a margin so the runner’s TimeoutError comes first', () => {
    expect(requestTimeouts(61_000, 1_000)).toEqual({ headersTimeout: 61_000, bodyTimeout: 61_000 });
    expect(requestTimeouts(1_000 + 3_600_000, 1_000)!.headersTimeout).toBeGreaterThan(300_000);
  });

  it('is undefined once the deadline has passed, never 0 (undici reads 0 as no timeout), and fits a timer', () => {
    expect(requestTimeouts(1000, 1000)).toBeUndefined();
    expect(requestTimeouts(999, 1000)).toBeUndefined();
    expect(requestTimeouts(Number.MAX_SAFE_INTEGER, 0)!.bodyTimeout).toBe(2 ** 31 - 1);
  });
});

describe('toTaskState', () => {
  it('reads /internal/progress answers', () => {
    expect(toTaskState({ active: true, queued: false, completed: false, progress: 0.25, eta: 3 })).toEqual({ kind: 'active', progress: 0.25 });
    expect(toTaskState({ active: true, progress: null })).toEqual({ kind: 'active', progress: undefined });
    expect(toTaskState({ active: true, progress: 1.7 })).toEqual({ kind: 'active', progress: 1 });
    expect(toTaskState({ active: false, queued: true, completed: false })).toEqual({ kind: 'queued' });
    expect(toTaskState({ active: false, queued: false, completed: true })).toEqual({ kind: 'completed' });
    expect(toTaskState({ active: false, queued: false, completed: false, textinfo: 'Waiting...' })).toEqual({ kind: 'unknown' });
    expect(toTaskState('nope').kind).toBe('error');
  });
});

describe('basicAuthHeader', () => {
  const config = { id: 'sd', usernameEnv: 'SD_USER', passwordEnv: 'SD_PASS' };

  it('builds the header from the two env vars, and nothing when none is configured', () => {
    expect(basicAuthHeader(config, { SD_USER: 'ann', SD_PASS: 'p:w' }).header).toBe(`Basic ${Buffer.from('ann:p:w').toString('base64')}`);
    expect(basicAuthHeader({ id: 'sd' }, {})).toEqual({ header: undefined, problem: undefined });
  });

  it('names the unset env var, and refuses a config with only one of the two', () => {
    expect(basicAuthHeader(config, { SD_PASS: 'x' })).toEqual({ header: undefined, problem: 'env var SD_USER is unset or empty' });
    expect(() => basicAuthHeader({ id: 'sd', usernameEnv: 'SD_USER' }, {})).toThrow(/must be set together/);
  });
});

describe('createA1111Backend against the fake server', () => {
  const servers: FakeA1111Server[] = [];
  const backends: ImageBackend[] = [];

  async function setup(extra: A1111ConfigInput = {}, serverOptions: FakeA1111ServerOptions = {}, env: NodeJS.ProcessEnv = {}) {
    const server = await startFakeA1111Server(serverOptions);
    servers.push(server);
    const backend = createA1111Backend(makeConfig(server.url, { progressPollMs: 50, ...extra }), { logger: silentLogger(), env });
    backends.push(backend);
    return { server, backend };
  }

  afterEach(async () => {
    await Promise.all(backends.splice(0).map((b) => b.close?.()));
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });

  const imageCalls = (server: FakeA1111Server) => server.requests.filter((r) => r.path.startsWith('/sdapi/v1/txt2img') || r.path.startsWith('/sdapi/v1/img2img'));

  it('generates one batch whose images carry seed + i, without warnings', async () => {
    const { server, backend } = await setup();
    const result = await backend.generate(callOptions({ n: 3, seed: 500 }));
    expect(result.images).toHaveLength(3);
    for (const [i, image] of result.images.entries()) expect(await pixelAt(image, 5, 5)).toEqual(colourForSeed(500 + i));
    expect(result.warnings).toEqual([]);
    expect(result.response.modelId).toBe('v1-5-pruned-emaonly');
    const sent = imageCalls(server)[0]!.json as Record<string, unknown>;
    expect(sent).toMatchObject({ batch_size: 3, n_iter: 1, seed: 500, width: 64, height: 48 });
    expect(sent.force_task_id).toMatch(/^task\(pixeld-[0-9a-f-]{36}\)$/);
  });

  it('sends basic auth from the env, and a wrong password is a rejection with A1111’s message', async () => {
    const auth = { username: 'ann', password: 's3cret' };
    const { backend } = await setup({ usernameEnv: 'U', passwordEnv: 'P' }, { auth }, { U: 'ann', P: 's3cret' });
    expect((await backend.generate(callOptions())).images).toHaveLength(1);
    await backend.checkHealth(AbortSignal.timeout(2_000));
    const wrong = await setup({ usernameEnv: 'U', passwordEnv: 'P' }, { auth }, { U: 'ann', P: 'nope' });
    const err = await backendError(wrong.backend.generate(callOptions()));
    expect(err).toMatchObject({ kind: 'rejected', status: 401, message: 'Incorrect username or password' });
    await expect(wrong.backend.checkHealth(AbortSignal.timeout(2_000))).rejects.toThrow(/HTTP 401/);
  });

  it('edits: sends the first image and a mask A1111 reads as inpaint where OpenAI said edit', async () => {
    const { server, backend } = await setup({ maskBlur: 0 });
    const result = await backend.generate(callOptions({ images: [photo, second], mask, seed: 9 }));
    const sent = imageCalls(server)[0]!.json as Record<string, any>;
    expect(imageCalls(server)[0]!.path).toBe('/sdapi/v1/img2img');
    expect(sent.init_images).toHaveLength(1);
    expect(Buffer.from(sent.init_images[0], 'base64').equals(await png('#204060'))).toBe(true);
    const maskMeta = await sharp(Buffer.from(sent.mask, 'base64')).metadata();
    expect([maskMeta.channels, maskMeta.hasAlpha]).toEqual([1, false]);
    // Left half (alpha 0) regenerated, right half (alpha 255) exactly the input.
    expect(await pixelAt(result.images[0]!, 60, 40)).toEqual([0x20, 0x40, 0x60]);
    expect(await pixelAt(result.images[0]!, 3, 3)).not.toEqual([0x20, 0x40, 0x60]);
    expect(result.warnings.map((w) => w.feature)).toEqual(['images']);
  });

  it('reports progress from /internal/progress for its own task and stops polling when done', async () => {
    const { server, backend } = await setup({ steps: 20 });
    server.setBehaviour({ stepMs: 25 });
    const seen: number[] = [];
    await backend.generate(callOptions({ onProgress: (p) => seen.push(p) }));
    expect(seen.length).toBeGreaterThanOrEqual(3);
    expect(seen.every((p) => p >= 0 && p <= 100)).toBe(true);
    expect(seen.some((p) => p > 0 && p < 100)).toBe(true);
    const taskId = (imageCalls(server)[0]!.json as Record<string, unknown>).force_task_id;
    const polls = server.requests.filter((r) => r.path === '/internal/progress');
    expect(polls.every((r) => (r.json as Record<string, unknown>).id_task === taskId)).toBe(true);
    expect(polls.every((r) => (r.json as Record<string, unknown>).live_preview === false)).toBe(true);
    await new Promise((r) => setTimeout(r, 200));
    expect(server.requests.filter((r) => r.path === '/internal/progress')).toHaveLength(polls.length);
  });

  it('on abort interrupts its running task and rejects with the abort reason', async () => {
    const { server, backend } = await setup();
    server.setBehaviour({ hang: true });
    const controller = new AbortController();
    const call = backend.generate(callOptions({ signal: controller.signal }));
    const started = await server.nextTaskStarted();
    const reason = new DOMException('the job was cancelled', 'AbortError');
    controller.abort(reason);
    expect(await rejection(call)).toBe(reason);
    expect(server.interrupts).toEqual([{ atMs: expect.any(Number), activeTask: started }]);
    expect(server.tasks.get(started)!.state).toBe('interrupted');
  });

  it('never interrupts someone else’s task: a cancelled queued task is interrupted only once it starts', async () => {
    const { server, backend } = await setup({ steps: 10 });
    server.setBehaviour({ stepMs: 40 });
    // Another client of the same web UI holds the GPU for ~400 ms.
    const theirs = fetch(`${server.url}/sdapi/v1/txt2img`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'theirs', force_task_id: 'task(theirs)', width: 64, height: 48, steps: 10 }),
    });
    await until(() => server.currentTask() === 'task(theirs)', 'their task to start');
    const controller = new AbortController();
    const call = backend.generate(callOptions({ signal: controller.signal }));
    await until(() => [...server.tasks.values()].some((t) => t.id !== 'task(theirs)' && t.state === 'queued'), 'our task to queue');
    controller.abort(new DOMException('cancelled', 'AbortError'));
    await rejection(call);
    expect(server.interrupts).toEqual([]);
    expect((await theirs).status).toBe(200);
    expect(server.tasks.get('task(theirs)')!.state).toBe('finished');
    await until(() => server.interrupts.length === 1, 'the interrupt of our task');
    const ours = [...server.tasks.values()].find((t) => t.id !== 'task(theirs)')!;
    expect(server.interrupts[0]!.activeTask).toBe(ours.id);
    await until(() => ours.state === 'interrupted', 'our task to end interrupted');
  });

  it('on a server without /internal/progress: generates, and does not interrupt blindly on abort', async () => {
    const { server, backend } = await setup({}, { progressRoute: false });
    const seen: number[] = [];
    expect((await backend.generate(callOptions({ onProgress: (p) => seen.push(p) }))).images).toHaveLength(1);
    expect(seen).toEqual([]);
    server.setBehaviour({ hang: true });
    const controller = new AbortController();
    const call = backend.generate(callOptions({ signal: controller.signal }));
    await server.nextTaskStarted();
    controller.abort(new DOMException('cancelled', 'AbortError'));
    await rejection(call);
    await new Promise((r) => setTimeout(r, 150));
    expect(server.interrupts).toEqual([]);
  });

  it('at the deadline rejects with the runner’s TimeoutError, not an undici timeout, and frees the GPU', async () => {
    const { server, backend } = await setup();
    server.setBehaviour({ hang: true });
    const signal = AbortSignal.timeout(300);
    const err = await rejection(backend.generate(callOptions({ signal, deadlineMs: Date.now() + 300 })));
    expect(err).toBeInstanceOf(DOMException);
    expect((err as DOMException).name).toBe('TimeoutError');
    expect(server.interrupts).toHaveLength(1);
  });

  it('maps failures: 422 and 404 rejected, 500 unavailable, refused and died-mid-request unavailable', async () => {
    const { server, backend } = await setup({ samplerName: 'Euler a' });
    const invalid = await backendError(backend.generate(callOptions({ numInferenceSteps: 2.5 })));
    expect(invalid).toMatchObject({ kind: 'rejected', status: 422, message: 'steps: value is not a valid integer' });

    server.setNextFailures(1, A1111_OOM_FAILURE);
    const oom = await backendError(backend.generate(callOptions()));
    expect(oom.kind).toBe('unavailable');
    expect(oom.retryable).toBe(true);
    expect(oom.message).toMatch(/^backend unavailable \(HTTP 500\): OutOfMemoryError: CUDA out of memory/);

    server.setBehaviour({ dieMidRequest: true });
    const died = await backendError(backend.generate(callOptions()));
    expect(died.kind).toBe('unavailable');

    const wrongSampler = await setup({ samplerName: 'Nope' });
    expect(await backendError(wrongSampler.backend.generate(callOptions()))).toMatchObject({ kind: 'rejected', status: 404, message: 'Sampler not found' });

    const port = await freePort();
    const refused = createA1111Backend(makeConfig(`http://127.0.0.1:${port}`), { logger: silentLogger(), env: {} });
    backends.push(refused);
    expect((await backendError(refused.generate(callOptions()))).kind).toBe('unavailable');
    await expect(refused.checkHealth(AbortSignal.timeout(2_000))).rejects.toBeInstanceOf(BackendError);
  });

  it('trims extension images and warns about seeds that are not seed + i', async () => {
    const { server, backend } = await setup();
    server.setBehaviour({ extraImages: 2, seeds: 'same' });
    const result = await backend.generate(callOptions({ n: 2, seed: 70 }));
    expect(result.images).toHaveLength(2);
    expect(result.warnings.map((w) => w.message)).toEqual([
      'backend returned 4 images for n=2 (extension outputs such as ControlNet maps); kept the first 2',
      'backend used seeds 70, 70 instead of 70, 71',
    ]);
  });
});

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}
