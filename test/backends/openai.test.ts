import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BackendError } from '../../src/backends/errors.js';
import {
  agentOptions,
  createOpenAIBackend,
  extractUpstreamError,
  parseRetryAfterMs,
  requestTimeouts,
  toEditParts,
  toGenerationBody,
} from '../../src/backends/openai.js';
import type { BackendCallOptions, ImageBackend, InputImage } from '../../src/backends/types.js';
import { serverHabits } from '../../src/backends/openai-flavors.js';
import { openaiBackendSchema } from '../../src/config/schema.js';
import type { ConfigInput, OpenAIBackendConfig } from '../../src/config/schema.js';
import { createLogger, silentLogger } from '../../src/obs/logger.js';
import {
  OPENAI_MODERATION_FAILURE,
  colourForSeed,
  renderImage,
  startFakeOpenAIServer,
} from '../fakes/openai-compatible-server.js';
import type { FakeFlavor, FakeOpenAIServer } from '../fakes/openai-compatible-server.js';
import { backendCallOptions } from '../helpers/backend-call.js';

type OpenAIConfigInput = Omit<Extract<ConfigInput['backends'][number], { type: 'openai' }>, 'type' | 'id' | 'baseUrl'>;

const UNDICI_DEFAULT_TIMEOUT_MS = 300_000;

function makeConfig(baseUrl: string, extra: OpenAIConfigInput = {}): OpenAIBackendConfig {
  return openaiBackendSchema.parse({ id: 'gpu-1', type: 'openai', baseUrl, ...extra });
}

function callOptions(overrides: Partial<BackendCallOptions> = {}): BackendCallOptions {
  return backendCallOptions({ model: 'fake-image-model', prompt: 'a red fox in snow', size: '64x48', ...overrides });
}

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

async function pixelAt(bytes: Uint8Array, x = 0, y = 0): Promise<[number, number, number]> {
  const { data, info } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const i = (y * info.width + x) * info.channels;
  return [data[i]!, data[i + 1]!, data[i + 2]!];
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

let dir: string;
let photo: InputImage;
let second: InputImage;
let mask: InputImage;
/** Alpha of the mask's pixels, row-major, 8x6. */
const maskAlpha = (x: number, y: number): number => (x < 4 ? 0 : y < 3 ? 128 : 255);

async function writeInput(name: string, bytes: Buffer, mediaType: InputImage['mediaType']): Promise<InputImage> {
  const path = join(dir, name);
  await writeFile(path, bytes);
  const meta = await sharp(bytes).metadata();
  return {
    path,
    mediaType,
    width: meta.width!,
    height: meta.height!,
    sha256: createHash('sha256').update(bytes).digest('hex'),
  };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pixeld-openai-test-'));
  photo = await writeInput('photo.png', await renderImage(8, 6, 7), 'image/png');
  second = await writeInput(
    'second.jpg',
    await sharp({ create: { width: 8, height: 6, channels: 3, background: '#336699' } }).jpeg().toBuffer(),
    'image/jpeg',
  );
  const raw = Buffer.alloc(8 * 6 * 4, 0);
  for (let y = 0; y < 6; y++) for (let x = 0; x < 8; x++) raw[(y * 8 + x) * 4 + 3] = maskAlpha(x, y);
  mask = await writeInput('mask.png', await sharp(raw, { raw: { width: 8, height: 6, channels: 4 } }).png().toBuffer(), 'image/png');
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const servers: FakeOpenAIServer[] = [];
const backends: ImageBackend[] = [];

async function setup(flavor: FakeFlavor, extra: OpenAIConfigInput = {}, serverOptions: { requireApiKey?: string } = {}) {
  const server = await startFakeOpenAIServer({ flavor, ...serverOptions });
  servers.push(server);
  const backend = createOpenAIBackend(makeConfig(server.url, extra), { logger: silentLogger() });
  backends.push(backend);
  return { server, backend };
}

afterEach(async () => {
  await Promise.all(backends.splice(0).map((b) => b.close?.()));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

describe('toGenerationBody', () => {
  it('sends every value that is set and leaves out the unset ones', () => {
    const body = toGenerationBody(
      callOptions({ n: 2, negativePrompt: 'blurry', guidanceScale: 4.5, numInferenceSteps: undefined }),
      { requestB64: true, sendExtensions: true, negativePrompt: 'field' },
    );
    expect(body).toEqual({
      model: 'fake-image-model',
      prompt: 'a red fox in snow',
      n: 2,
      size: '64x48',
      response_format: 'b64_json',
      seed: 42,
      negative_prompt: 'blurry',
      guidance_scale: 4.5,
      output_format: 'png',
      background: 'auto',
      quality: 'high',
    });
    expect(Object.keys(body)).not.toContain('num_inference_steps');
  });

  it('omits response_format when b64 is not requested, so the server answers in its own default', () => {
    expect(toGenerationBody(callOptions(), { requestB64: false, sendExtensions: true, negativePrompt: 'field' })).not.toHaveProperty('response_format');
  });

  it('leaves the extension fields out for servers that refuse unknown fields (OpenAI itself)', () => {
    const body = toGenerationBody(callOptions({ negativePrompt: 'blurry', guidanceScale: 4.5, numInferenceSteps: 20 }), {
      requestB64: true,
      sendExtensions: false,
      negativePrompt: 'field',
    });
    for (const key of ['seed', 'negative_prompt', 'guidance_scale', 'num_inference_steps']) expect(body).not.toHaveProperty(key);
    expect(body).toMatchObject({ prompt: 'a red fox in snow', n: 1 });
  });
});

describe('toEditParts', () => {
  it('repeats image[] for every input, even one, and sends scalars as strings', () => {
    const config = makeConfig('http://127.0.0.1:1/v1');
    const parts = toEditParts(callOptions({ images: [photo], mask, n: 3 }), serverHabits(config));
    expect(parts.filter((p) => p.kind === 'file')).toEqual([
      { kind: 'file', name: 'image[]', path: photo.path, filename: 'image-0.png', mediaType: 'image/png', transform: 'none' },
      { kind: 'file', name: 'mask', path: mask.path, filename: 'mask.png', mediaType: 'image/png', transform: 'none' },
    ]);
    expect(parts).toContainEqual({ kind: 'field', name: 'n', value: '3' });
    expect(parts).toContainEqual({ kind: 'field', name: 'seed', value: '42' });
    expect(parts).toContainEqual({ kind: 'field', name: 'response_format', value: 'b64_json' });
  });

  it('uses the configured image and mask fields and marks the mask for conversion', () => {
    const config = makeConfig('http://127.0.0.1:1/v1', {
      editImageField: 'image',
      editMaskField: 'mask_image',
      maskConvention: 'white-inpaint',
    });
    const files = toEditParts(callOptions({ images: [photo, second], mask }), serverHabits(config)).filter((p) => p.kind === 'file');
    expect(files.map((f) => [f.name, f.kind === 'file' && f.filename, f.kind === 'file' && f.transform])).toEqual([
      ['image', 'image-0.png', 'none'],
      ['image', 'image-1.jpg', 'none'],
      ['mask_image', 'mask.png', 'white-inpaint-mask'],
    ]);
  });
});

describe('timeouts', () => {
  it('sets undici header and body timeouts from a deadline far beyond its 300 s default', () => {
    const now = 1_000_000;
    const timeouts = requestTimeouts(now + 60 * 60_000, now);
    expect(timeouts).toEqual({ headersTimeout: 3_600_000, bodyTimeout: 3_600_000 });
    expect(timeouts!.headersTimeout).toBeGreaterThan(UNDICI_DEFAULT_TIMEOUT_MS);
  });

  it('never returns 0, which undici reads as "no timeout"', () => {
    expect(requestTimeouts(1000, 1000)).toBeUndefined();
    expect(requestTimeouts(999, 1000)).toBeUndefined();
    expect(requestTimeouts(1000.4, 1000)).toEqual({ headersTimeout: 1, bodyTimeout: 1 });
  });

  it('caps a far-off deadline below the timer overflow', () => {
    expect(requestTimeouts(Number.MAX_SAFE_INTEGER, 0)?.headersTimeout).toBe(2 ** 31 - 1);
  });

  it('takes the connect timeout from config', () => {
    expect(agentOptions({ connectTimeoutMs: 1234 })).toEqual({ connect: { timeout: 1234 } });
  });

  it('times out at the deadline rather than undici defaults, and drops the connection', async () => {
    const { server, backend } = await setup('openai');
    server.setBehaviour({ delayMs: 5_000 });
    const disconnected = server.nextDisconnect();
    const started = Date.now();
    const err = await backendError(backend.generate(callOptions({ deadlineMs: Date.now() + 300 })));
    expect(err.kind).toBe('timeout');
    expect(Date.now() - started).toBeLessThan(3_000);
    expect((await disconnected).path).toBe('/v1/images/generations');
  });

  it('does not call the backend when the deadline has already passed', async () => {
    const { server, backend } = await setup('openai');
    const err = await backendError(backend.generate(callOptions({ deadlineMs: Date.now() - 1 })));
    expect(err.kind).toBe('timeout');
    expect(server.requests).toHaveLength(0);
  });
});

describe('generation', () => {
  it.each<[FakeFlavor, 'seed per image' | 'one seed per call']>([
    ['sglang', 'seed per image'],
    ['vllm-omni', 'one seed per call'],
    ['localai', 'one seed per call'],
    ['openai', 'seed per image'],
  ])(
    '%s: returns b64_json images of the requested size (%s)',
    async (flavor, seeds) => {
      const { server, backend } = await setup(flavor);
      const result = await backend.generate(callOptions({ n: 2, seed: 100 }));
      expect(result.images).toHaveLength(2);
      for (const [i, image] of result.images.entries()) {
        expect(image).toBeInstanceOf(Uint8Array);
        const meta = await sharp(image).metadata();
        expect([meta.format, meta.width, meta.height]).toEqual(['png', 64, 48]);
        // vLLM-Omni and LocalAI give every image of a call the call's one seed: copies of one picture.
        expect(await pixelAt(image)).toEqual(colourForSeed(seeds === 'seed per image' ? 100 + i : 100));
      }
      expect(result.warnings).toEqual([]);
      expect(result.response.modelId).toBe('fake-image-model');
      expect(result.response.headers?.['x-request-id']).toMatch(/^req_/);
      expect(server.requests).toHaveLength(1);
      expect(server.requests[0]!.json).toMatchObject({ response_format: 'b64_json', n: 2, seed: 100, size: '64x48' });
    },
  );

  it.each<[FakeFlavor]>([['sglang'], ['localai']])(
    '%s: without response_format the server answers with URLs, which are downloaded at once',
    async (flavor) => {
      const { server, backend } = await setup(flavor, { requestB64: false });
      const result = await backend.generate(callOptions({ n: 2, seed: 5 }));
      expect(server.requests[0]!.json).not.toHaveProperty('response_format');
      const downloads = server.requests.filter((r) => r.method === 'GET' && r.path.startsWith('/files/'));
      expect(downloads).toHaveLength(2);
      const perImage = flavor === 'sglang';
      expect(await Promise.all(result.images.map((img) => pixelAt(img)))).toEqual([colourForSeed(5), colourForSeed(perImage ? 6 : 5)]);
    },
  );

  it('sends the optional model knobs only when set', async () => {
    const { server, backend } = await setup('sglang');
    await backend.generate(callOptions({ negativePrompt: 'text, watermark', numInferenceSteps: 28, guidanceScale: 3.5 }));
    expect(server.requests[0]!.json).toMatchObject({
      negative_prompt: 'text, watermark',
      num_inference_steps: 28,
      guidance_scale: 3.5,
    });
  });

  it('returns what the server produced when it gives fewer images than asked', async () => {
    const { server, backend } = await setup('sglang');
    server.setBehaviour({ maxImagesReturned: 1 });
    const result = await backend.generate(callOptions({ n: 3 }));
    expect(result.images).toHaveLength(1);
  });

  it('keeps only n images when the server sends extra ones, with a warning', async () => {
    const { server, backend } = await setup('openai');
    const [a, b] = await Promise.all([renderImage(4, 4, 1), renderImage(4, 4, 2)]);
    server.setNextFailures(1, {
      status: 200,
      body: { created: 1, data: [{ b64_json: a.toString('base64') }, { b64_json: b.toString('base64') }] },
    });
    const result = await backend.generate(callOptions({ n: 1 }));
    expect(result.images).toHaveLength(1);
    expect(Buffer.from(result.images[0]!).equals(a)).toBe(true);
    expect(result.warnings).toHaveLength(1);
    expect(result.warnings[0]!.message).toContain('kept the first 1');
  });

  it('returns bytes that are not an image as they are: the runner sniffs formats', async () => {
    const { server, backend } = await setup('vllm-omni');
    server.setBehaviour({ garbageB64: true });
    const result = await backend.generate(callOptions());
    expect(result.images[0]!.length).toBe(64);
    await expect(sharp(result.images[0]!).metadata()).rejects.toThrow();
  });

  it('accepts a data URL inside b64_json and as url', async () => {
    const { server, backend } = await setup('localai');
    const png = await renderImage(4, 4, 9);
    const dataUrl = `data:image/png;base64,${png.toString('base64')}`;
    server.setNextFailures(1, { status: 200, body: { created: 1, data: [{ b64_json: dataUrl }, { url: dataUrl }] } });
    const result = await backend.generate(callOptions({ n: 2 }));
    expect(result.images.map((i) => Buffer.from(i).equals(png))).toEqual([true, true]);
  });
});

describe('edits', () => {
  it('openai: sends two images as repeated image[] and the alpha mask untouched', async () => {
    const { server, backend } = await setup('openai');
    const result = await backend.generate(callOptions({ images: [photo, second], mask, size: '8x6' }));
    expect(result.images).toHaveLength(1);
    const req = server.requests[0]!;
    expect(req.path).toBe('/v1/images/edits');
    expect(req.headers['content-type']).toMatch(/^multipart\/form-data; boundary=/);
    expect(req.files!.map((f) => [f.field, f.filename, f.mimeType, f.size])).toEqual([
      ['image[]', 'image-0.png', 'image/png', (await stat(photo.path)).size],
      ['image[]', 'image-1.jpg', 'image/jpeg', (await stat(second.path)).size],
      ['mask', 'mask.png', 'image/png', (await stat(mask.path)).size],
    ]);
    expect(req.files![0]!.bytes.equals(await readFile(photo.path))).toBe(true);
    expect(req.files![1]!.bytes.equals(await readFile(second.path))).toBe(true);
    expect(req.files![2]!.bytes.equals(await readFile(mask.path))).toBe(true);
    expect(req.fields).toMatchObject({ prompt: ['a red fox in snow'], n: ['1'], seed: ['42'], response_format: ['b64_json'] });
  });

  it('sglang: sends repeated image fields; the server ignores the mask but the call succeeds', async () => {
    const { server, backend } = await setup('sglang', { editImageField: 'image' });
    const result = await backend.generate(callOptions({ images: [photo, second], mask, size: '8x6', seed: 3 }));
    expect(await pixelAt(result.images[0]!)).toEqual(colourForSeed(3));
    const files = server.requests[0]!.files!;
    expect(files.map((f) => f.field)).toEqual(['image', 'image', 'mask']);
    expect(files.map((f) => f.size)).toEqual([
      (await stat(photo.path)).size,
      (await stat(second.path)).size,
      (await stat(mask.path)).size,
    ]);
  });

  it('vllm-omni: converts the mask to white = inpaint and sends it as mask_image', async () => {
    const { server, backend } = await setup('vllm-omni', {
      editMaskField: 'mask_image',
      maskConvention: 'white-inpaint',
    });
    await backend.generate(callOptions({ images: [photo], mask, size: '8x6' }));
    const sent = server.requests[0]!.files!.find((f) => f.field === 'mask_image');
    expect(sent).toBeDefined();
    expect(server.requests[0]!.files!.map((f) => f.field)).toEqual(['image[]', 'mask_image']);
    const meta = await sharp(sent!.bytes).metadata();
    expect([meta.format, meta.channels, meta.width, meta.height]).toEqual(['png', 1, 8, 6]);
    const pixels = await sharp(sent!.bytes).extractChannel(0).raw().toBuffer();
    for (let y = 0; y < 6; y++) {
      for (let x = 0; x < 8; x++) expect(pixels[y * 8 + x]).toBe(255 - maskAlpha(x, y));
    }
  });

  it('localai: has no edits endpoint, which is a rejection with its text', async () => {
    const { backend, server } = await setup('localai');
    const err = await backendError(backend.generate(callOptions({ images: [photo] })));
    expect(err.kind).toBe('rejected');
    // The shared sanitiser hides anything path-like, route names included.
    expect(err.message).toBe('Cannot POST [path]');
    expect(err.status).toBe(404);
    expect(err.details).toEqual(['Status: 404', `URL: ${server.url}/images/edits`]);
  });

  it('openai: a mask of the wrong size is the caller’s error, passed through', async () => {
    const { backend } = await setup('openai');
    const small = await writeInput('small-mask.png', await sharp({ create: { width: 2, height: 2, channels: 4, background: '#0000' } }).png().toBuffer(), 'image/png');
    const err = await backendError(backend.generate(callOptions({ images: [photo], mask: small })));
    expect(err.kind).toBe('rejected');
    expect(err.message).toBe('mask must have the same dimensions as the image');
  });
});

describe('upstream errors', () => {
  it.each<[FakeFlavor]>([['sglang'], ['vllm-omni'], ['localai'], ['openai']])(
    '%s: a 400 in the flavor’s own error shape is a rejection with its message',
    async (flavor) => {
      const { server, backend } = await setup(flavor);
      server.setNextFailures(1, { status: 400, message: 'size 64x48 is not supported by this model' });
      const err = await backendError(backend.generate(callOptions()));
      expect(err.kind).toBe('rejected');
      expect(err.retryable).toBe(false);
      expect(err.message).toBe('size 64x48 is not supported by this model');
      expect(err.backendId).toBe('gpu-1');
      expect(err.details).toContain('Status: 400');
    },
  );

  it.each([
    ['FastAPI validation list', { detail: [{ loc: ['body', 'size'], msg: 'bad size', type: 'value_error' }, { msg: 'n too big' }] }, 'size: bad size; n too big'],
    ['error string', { error: 'model not loaded' }, 'model not loaded'],
    ['bare message', { object: 'error', message: 'guidance_scale must be > 1', type: 'BadRequestError', code: 400 }, 'guidance_scale must be > 1'],
    ['plain text', 'Bad Request: prompt too long', 'Bad Request: prompt too long'],
    ['empty JSON', {}, 'HTTP 422'],
  ])('reads the message from a %s body', async (_shape, body, message) => {
    const { server, backend } = await setup('openai');
    server.setNextFailures(1, { status: 422, body });
    const err = await backendError(backend.generate(callOptions()));
    expect([err.kind, err.message]).toEqual(['rejected', message]);
  });

  it('sanitises upstream messages: no newlines, paths or base64 echoes', async () => {
    const { server, backend } = await setup('sglang');
    server.setNextFailures(1, {
      status: 400,
      message: `failed loading /opt/models/flux/transformer.safetensors\nimage=${'A'.repeat(200)}`,
    });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.message).toBe('failed loading [path] [data]');
  });

  it.each([
    ['OpenAI moderation_blocked', OPENAI_MODERATION_FAILURE.body],
    ['DALL-E content_policy_violation', { error: { message: 'Your request was rejected', type: 'invalid_request_error', code: 'content_policy_violation' } }],
    ['a top-level safety type', { detail: 'NSFW content detected', type: 'safety_checker' }],
  ])('a 400 flagged as %s is a moderation block', async (_name, body) => {
    const { server, backend } = await setup('openai');
    server.setNextFailures(1, { status: 400, body });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.kind).toBe('moderation');
    expect(err.retryable).toBe(false);
  });

  it.each([500, 502, 503, 504, 429])('HTTP %i is unavailable and retryable', async (status) => {
    const { server, backend } = await setup('vllm-omni');
    server.setNextFailures(1, { status, message: 'engine busy' });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.kind).toBe('unavailable');
    expect(err.retryable).toBe(true);
    expect(err.status).toBe(status);
    expect(err.message).toBe(`backend unavailable (HTTP ${status}): engine busy`);
    expect(err.details).toEqual([`Status: ${status}`, `URL: ${server.url}/images/generations`]);
  });

  it('carries Retry-After (seconds or ms) as retryAfterMs', async () => {
    const { server, backend } = await setup('openai');
    server.setNextFailures(1, { status: 429, message: 'slow down', headers: { 'retry-after': '7' } });
    expect((await backendError(backend.generate(callOptions()))).retryAfterMs).toBe(7_000);
    server.setNextFailures(1, { status: 503, message: 'loading', headers: { 'retry-after-ms': '1500' } });
    expect((await backendError(backend.generate(callOptions()))).retryAfterMs).toBe(1_500);
    server.setNextFailures(1, { status: 503, message: 'loading' });
    expect((await backendError(backend.generate(callOptions()))).retryAfterMs).toBeUndefined();
  });

  it('parses an HTTP-date Retry-After against the clock', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(parseRetryAfterMs({ 'retry-after': 'Thu, 01 Jan 2026 00:00:30 GMT' }, now)).toBe(30_000);
    expect(parseRetryAfterMs({ 'retry-after': 'soon' }, now)).toBeUndefined();
  });

  it('keeps credentials out of the URL in details', async () => {
    const server = await startFakeOpenAIServer({ flavor: 'openai' });
    servers.push(server);
    const backend = createOpenAIBackend(makeConfig(server.url.replace('http://', 'http://admin:hunter2@')), { logger: silentLogger() });
    backends.push(backend);
    server.setNextFailures(1, { status: 503 });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.details).toContain(`URL: ${server.url}/images/generations`);
    expect(JSON.stringify(err.details)).not.toContain('hunter2');
  });

  it('connection refused is unavailable', async () => {
    const port = await freePort();
    const backend = createOpenAIBackend(makeConfig(`http://127.0.0.1:${port}/v1`), { logger: silentLogger() });
    backends.push(backend);
    const err = await backendError(backend.generate(callOptions()));
    expect(err.kind).toBe('unavailable');
    expect(err.message).toContain('ECONNREFUSED');
    expect(err.details).toEqual([`URL: http://127.0.0.1:${port}/v1/images/generations`]);
  });

  it('a socket closed mid-response is unavailable', async () => {
    const { server, backend } = await setup('sglang');
    server.setBehaviour({ destroyMidResponse: true });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.kind).toBe('unavailable');
  });
});

describe('bad responses', () => {
  it.each([['empty' as const], ['missing' as const]])('200 with %s data is a bad response', async (data) => {
    const { server, backend } = await setup('sglang');
    server.setBehaviour({ data });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.kind).toBe('bad_response');
    expect(err.retryable).toBe(false);
    expect(err.details[0]).toBe('Status: 200');
  });

  it('200 with a body that is not JSON is a bad response', async () => {
    const { server, backend } = await setup('openai');
    server.setBehaviour({ invalidJson: true });
    const err = await backendError(backend.generate(callOptions()));
    expect([err.kind, err.message]).toEqual(['bad_response', 'backend response is not valid JSON']);
  });

  it.each([
    ['an entry with neither b64_json nor url', { data: [{ revised_prompt: 'x' }] }],
    ['an empty b64_json', { data: [{ b64_json: '' }] }],
    ['b64_json without a base64 character in it', { data: [{ b64_json: '!!! ???' }] }],
    ['a url with an odd scheme', { data: [{ url: 'file:///etc/passwd' }] }],
  ])('200 with %s is a bad response', async (_name, body) => {
    const { server, backend } = await setup('openai');
    server.setNextFailures(1, { status: 200, body });
    expect((await backendError(backend.generate(callOptions()))).kind).toBe('bad_response');
  });

  it('a result URL that fails to download is a bad response', async () => {
    const { server, backend } = await setup('sglang', { requestB64: false });
    server.setBehaviour({ downloadStatus: 404 });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.kind).toBe('bad_response');
    expect(err.details[0]).toBe('Status: 404');
    expect(err.details[1]).toMatch(new RegExp(`^URL: ${server.origin}/files/`));
  });

  it('a result image over maxDownloadBytes is refused', async () => {
    const { backend } = await setup('sglang', { requestB64: false, maxDownloadBytes: 50 });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.kind).toBe('bad_response');
    expect(err.message).toContain('maxDownloadBytes');
  });
});

describe('cancellation', () => {
  it('aborting stops the request: the reason comes back as is and the server sees the disconnect', async () => {
    const { server, backend } = await setup('openai');
    server.setBehaviour({ hang: true });
    const controller = new AbortController();
    const disconnected = server.nextDisconnect();
    const pending = backend.generate(callOptions({ signal: controller.signal }));
    await expect.poll(() => server.requests.length).toBe(1);
    const reason = new DOMException('job cancelled', 'AbortError');
    controller.abort(reason);
    expect(await rejection(pending)).toBe(reason);
    const gone = await disconnected;
    expect(gone.path).toBe('/v1/images/generations');
    expect(gone.disconnected).toBe(true);
  });

  it('a deadline abort by the runner rethrows its TimeoutError reason', async () => {
    const { server, backend } = await setup('sglang');
    server.setBehaviour({ delayMs: 10_000 });
    const controller = new AbortController();
    const pending = backend.generate(callOptions({ signal: controller.signal, images: [photo], mask }));
    await expect.poll(() => server.requests.length).toBe(1);
    const reason = new DOMException('attempt deadline', 'TimeoutError');
    controller.abort(reason);
    const err = await rejection(pending);
    expect(err).toBe(reason);
    expect((err as DOMException).name).toBe('TimeoutError');
  });

  it('aborts result downloads too', async () => {
    const { server, backend } = await setup('sglang', { requestB64: false });
    server.setBehaviour({ downloadDelayMs: 10_000 });
    const controller = new AbortController();
    const disconnected = server.nextDisconnect();
    const pending = backend.generate(callOptions({ signal: controller.signal }));
    await expect.poll(() => server.requests.some((r) => r.path.startsWith('/files/'))).toBe(true);
    const reason = new DOMException('job cancelled', 'AbortError');
    controller.abort(reason);
    expect(await rejection(pending)).toBe(reason);
    expect((await disconnected).path).toMatch(/^\/files\//);
  });

  it('an already aborted signal makes no request', async () => {
    const { server, backend } = await setup('openai');
    const reason = new DOMException('gone', 'AbortError');
    expect(await rejection(backend.generate(callOptions({ signal: AbortSignal.abort(reason) })))).toBe(reason);
    expect(server.requests).toHaveLength(0);
  });
});

describe('auth', () => {
  it('sends config.apiKey as a bearer token and never logs it', async () => {
    const server = await startFakeOpenAIServer({ flavor: 'openai', requireApiKey: 'sk-test-123' });
    servers.push(server);
    const lines: string[] = [];
    const stream = new PassThrough();
    stream.on('data', (c: Buffer) => lines.push(c.toString()));
    const backend = createOpenAIBackend(makeConfig(server.url, { apiKey: 'sk-test-123' }), {
      logger: createLogger({ level: 'debug', stream }),
    });
    backends.push(backend);
    server.setNextFailures(1, { status: 400, message: 'nope' });
    await rejection(backend.generate(callOptions()));
    await backend.generate(callOptions());
    await backend.checkHealth(AbortSignal.timeout(5_000));
    expect(server.requests.map((r) => r.headers.authorization)).toEqual(new Array(3).fill('Bearer sk-test-123'));
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.join('')).not.toContain('sk-test-123');
  });

  it('reads the key from the env var named by apiKeyEnv', async () => {
    const name = 'PIXELD_TEST_OPENAI_KEY';
    process.env[name] = 'sk-from-env';
    try {
      const { server, backend } = await setup('vllm-omni', { apiKeyEnv: name }, { requireApiKey: 'sk-from-env' });
      await backend.generate(callOptions());
      expect(server.requests[0]!.headers.authorization).toBe('Bearer sk-from-env');
    } finally {
      delete process.env[name];
    }
  });

  it('sends no authorization header without a key, and a missing key is a rejection', async () => {
    const { server, backend } = await setup('openai', {}, { requireApiKey: 'sk-needed' });
    const err = await backendError(backend.generate(callOptions()));
    expect(server.requests[0]!.headers.authorization).toBeUndefined();
    expect([err.kind, err.status, err.message]).toEqual(['rejected', 401, 'Incorrect API key provided.']);
  });
});

describe('checkHealth and identity', () => {
  it('resolves when the health path answers 2xx', async () => {
    const { server, backend } = await setup('sglang');
    await expect(backend.checkHealth(AbortSignal.timeout(5_000))).resolves.toBeUndefined();
    expect(server.requests[0]!.path).toBe('/v1/models');
  });

  it('rejects with unavailable on a non-2xx or an unreachable server', async () => {
    const { server, backend } = await setup('localai', { healthPath: '/readyz' });
    const notFound = await backendError(backend.checkHealth(AbortSignal.timeout(5_000)));
    expect([notFound.kind, notFound.status]).toEqual(['unavailable', 404]);
    expect(server.requests[0]!.path).toBe('/v1/readyz');

    const port = await freePort();
    const down = createOpenAIBackend(makeConfig(`http://127.0.0.1:${port}/v1`), { logger: silentLogger() });
    backends.push(down);
    expect((await backendError(down.checkHealth(AbortSignal.timeout(5_000)))).kind).toBe('unavailable');
  });

  it('exposes id, type and limits from config and stamps results with the injected clock', async () => {
    const server = await startFakeOpenAIServer({ flavor: 'openai' });
    servers.push(server);
    const backend = createOpenAIBackend(makeConfig(server.url, { maxImagesPerCall: 2, rerunInterruptedJobs: false }), {
      logger: silentLogger(),
      now: () => 1_700_000_000_000,
    });
    backends.push(backend);
    expect([backend.id, backend.type, backend.maxImagesPerCall, backend.rerunInterruptedJobs]).toEqual(['gpu-1', 'openai', 2, false]);
    // The fixed clock says the deadline is far off, so the call goes ahead.
    const result = await backend.generate(callOptions({ deadlineMs: 1_700_000_060_000 }));
    expect(result.response.timestampMs).toBe(1_700_000_000_000);
  });
});

describe('extractUpstreamError', () => {
  it('collects code and type from both levels', () => {
    expect(extractUpstreamError(JSON.stringify(OPENAI_MODERATION_FAILURE.body))).toEqual({
      message: 'Your request was rejected as a result of our safety system.',
      codes: ['moderation_blocked', 'image_generation_user_error'],
    });
    expect(extractUpstreamError('')).toEqual({ message: undefined, codes: [] });
  });
});

describe('redirects', () => {
  it('a redirect is a bad response naming where it pointed, since baseUrl is then wrong', async () => {
    const { server, backend } = await setup('openai');
    server.setNextFailures(1, { status: 308, body: {}, headers: { location: '/v2/images/generations?token=abc' } });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.kind).toBe('bad_response');
    expect(err.message).toBe(`backend answered HTTP 308 (to ${server.origin}/v2/images/generations)`);
  });
});

describe('the fake server itself', () => {
  it('renders noisy 1024x1024 PNGs about as heavy as real model output', async () => {
    const png = await renderImage(1024, 1024, 11, 'png', true);
    expect(png.length).toBeGreaterThan(1.5 * 1024 * 1024);
    expect((await sharp(png).metadata()).width).toBe(1024);
  });

  it('sglang falls back to seed 1024 and a URL when the request names neither', async () => {
    const server = await startFakeOpenAIServer({ flavor: 'sglang' });
    servers.push(server);
    const res = await fetch(`${server.url}/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'x', size: '16x16' }),
    });
    const body = (await res.json()) as { data: Array<{ url: string }>; inference_time_s: number; peak_memory_mb: number };
    expect(body).toHaveProperty('inference_time_s');
    expect(body).toHaveProperty('peak_memory_mb');
    const image = new Uint8Array(await (await fetch(body.data[0]!.url)).arrayBuffer());
    expect(await pixelAt(image)).toEqual(colourForSeed(1024));
  });
});

describe('flavors', () => {
  it('set each server’s habits, and a key set in the config wins over its flavor', () => {
    expect(serverHabits(makeConfig('http://127.0.0.1:1/v1'))).toMatchObject({ editPath: '/images/edits', maskConvention: 'openai-alpha', seedPerImage: true });
    expect(serverHabits(makeConfig('http://127.0.0.1:1/v1', { flavor: 'localai' }))).toMatchObject({
      editPath: '/images/inpainting',
      maskConvention: 'white-inpaint',
      seedPerImage: false,
      negativePrompt: 'prompt-pipe',
    });
    expect(serverHabits(makeConfig('http://127.0.0.1:1/v1', { flavor: 'sglang' })).maskConvention).toBe('ignored');
    expect(serverHabits(makeConfig('http://127.0.0.1:1/v1', { flavor: 'openai' }))).toMatchObject({ sendExtensions: false, requestB64: false });
    const overridden = serverHabits(makeConfig('http://127.0.0.1:1/v1', { flavor: 'vllm-omni', seedPerImage: true, editMaskField: 'mask' }));
    expect(overridden).toMatchObject({ seedPerImage: true, editMaskField: 'mask', maskConvention: 'white-inpaint' });
  });

  it('a server with one seed per call makes one image per call', () => {
    const backend = (extra: OpenAIConfigInput) => {
      const b = createOpenAIBackend(makeConfig('http://127.0.0.1:1/v1', { maxImagesPerCall: 4, ...extra }), { logger: silentLogger() });
      backends.push(b);
      return b;
    };
    expect(backend({ flavor: 'vllm-omni' }).maxImagesPerCall).toBe(1);
    expect(backend({ flavor: 'localai' }).maxImagesPerCall).toBe(1);
    expect(backend({ flavor: 'sglang' }).maxImagesPerCall).toBe(4);
    expect(backend({ flavor: 'localai', seedPerImage: true }).maxImagesPerCall).toBe(4);
  });
});
