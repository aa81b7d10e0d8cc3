import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BackendError } from '../../src/backends/errors.js';
import {
  TRACE_ID_HEADER,
  createSiliconFlowBackend,
  extractSiliconFlowError,
  isSiliconFlowModeration,
  planSiliconFlowCall,
  toDataUrl,
  toSiliconFlowBody,
} from '../../src/backends/siliconflow.js';
import type { BackendCallOptions, ImageBackend, InputImage } from '../../src/backends/types.js';
import { siliconflowBackendSchema } from '../../src/config/schema.js';
import type { ConfigInput, SiliconFlowBackendConfig } from '../../src/config/schema.js';
import { createLogger } from '../../src/obs/logger.js';
import {
  CODE_MODEL_NOT_FOUND,
  colourForSeed,
  renderImage,
  startFakeSiliconFlowServer,
  type FakeSiliconFlowOptions,
  type FakeSiliconFlowServer,
} from '../fakes/siliconflow-server.js';
import { backendCallOptions } from '../helpers/backend-call.js';

type SiliconFlowConfigInput = Omit<Extract<ConfigInput['backends'][number], { type: 'siliconflow' }>, 'type' | 'id' | 'baseUrl'>;

const KEY = 'sk-sf-test-123';

function makeConfig(baseUrl: string, extra: SiliconFlowConfigInput = {}): SiliconFlowBackendConfig {
  return siliconflowBackendSchema.parse({ id: 'sf', type: 'siliconflow', baseUrl, apiKey: KEY, ...extra });
}

function callOptions(overrides: Partial<BackendCallOptions> = {}): BackendCallOptions {
  return backendCallOptions({ model: 'Kwai-Kolors/Kolors', prompt: 'a red fox in snow', size: '64x48', ...overrides });
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

async function pixelAt(bytes: Uint8Array): Promise<[number, number, number]> {
  const { data } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return [data[0]!, data[1]!, data[2]!];
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
let third: InputImage;
let fourth: InputImage;
let mask: InputImage;

async function writeInput(name: string, bytes: Buffer, mediaType: InputImage['mediaType']): Promise<InputImage> {
  const path = join(dir, name);
  await writeFile(path, bytes);
  const meta = await sharp(bytes).metadata();
  return { path, mediaType, width: meta.width!, height: meta.height!, sha256: createHash('sha256').update(bytes).digest('hex') };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pixeld-siliconflow-test-'));
  photo = await writeInput('photo.png', await renderImage(8, 6, 7), 'image/png');
  second = await writeInput('second.jpg', await sharp({ create: { width: 8, height: 6, channels: 3, background: '#336699' } }).jpeg().toBuffer(), 'image/jpeg');
  third = await writeInput('third.webp', await sharp({ create: { width: 8, height: 6, channels: 3, background: '#993366' } }).webp().toBuffer(), 'image/webp');
  fourth = await writeInput('fourth.png', await renderImage(8, 6, 99), 'image/png');
  mask = await writeInput('mask.png', await sharp({ create: { width: 8, height: 6, channels: 4, background: '#00000000' } }).png().toBuffer(), 'image/png');
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const servers: FakeSiliconFlowServer[] = [];
const backends: ImageBackend[] = [];

async function setup(extra: SiliconFlowConfigInput = {}, serverOptions: FakeSiliconFlowOptions = { requireApiKey: KEY }, logLines?: string[]) {
  const server = await startFakeSiliconFlowServer(serverOptions);
  servers.push(server);
  const stream = new PassThrough();
  if (logLines) stream.on('data', (c: Buffer) => logLines.push(...c.toString().split('\n').filter((l) => l.trim() !== '')));
  const backend = createSiliconFlowBackend(makeConfig(server.url, extra), { logger: createLogger({ level: 'debug', stream }) });
  backends.push(backend);
  return { server, backend };
}

afterEach(async () => {
  await Promise.all(backends.splice(0).map((b) => b.close?.()));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

describe('config', () => {
  it('defaults to one image per call, so the runner gives every image its own seed', () => {
    const config = makeConfig('https://api.siliconflow.cn/v1');
    expect(config.maxImagesPerCall).toBe(1);
    expect(() => makeConfig('https://api.siliconflow.cn/v1', { maxImagesPerCall: 5 })).toThrow();
  });
});

describe('toSiliconFlowBody', () => {
  it('maps every set option, and leaves unset optional ones out', () => {
    const body = toSiliconFlowBody(callOptions({ n: 2, seed: 7, negativePrompt: 'blurry', guidanceScale: 4.5 }), {}, []);
    expect(body).toEqual({
      model: 'Kwai-Kolors/Kolors',
      prompt: 'a red fox in snow',
      negative_prompt: 'blurry',
      image_size: '64x48',
      batch_size: 2,
      seed: 7,
      guidance_scale: 4.5,
    });
    expect(body).not.toHaveProperty('num_inference_steps');
    expect(body).not.toHaveProperty('image');
  });

  it('uses the configured steps and guidance only when the caller gives none', () => {
    const config = { numInferenceSteps: 25, guidanceScale: 7.5 };
    expect(toSiliconFlowBody(callOptions(), config, [])).toMatchObject({ num_inference_steps: 25, guidance_scale: 7.5 });
    expect(toSiliconFlowBody(callOptions({ numInferenceSteps: 40, guidanceScale: 2 }), config, [])).toMatchObject({
      num_inference_steps: 40,
      guidance_scale: 2,
    });
  });

  it('puts input images into image, image2 and image3, never more', () => {
    expect(toSiliconFlowBody(callOptions(), {}, ['data:a'])).toMatchObject({ image: 'data:a' });
    const body = toSiliconFlowBody(callOptions(), {}, ['data:a', 'data:b', 'data:c', 'data:d']);
    expect([body.image, body.image2, body.image3]).toEqual(['data:a', 'data:b', 'data:c']);
    expect(Object.values(body)).not.toContain('data:d');
  });

  it('makes data URLs of the exact bytes', () => {
    expect(toDataUrl(new Uint8Array([1, 2, 3]), 'image/png')).toBe('data:image/png;base64,AQID');
  });
});

describe('planSiliconFlowCall', () => {
  it('warns about nothing for a plain one-image call', () => {
    expect(planSiliconFlowCall(callOptions())).toEqual({ inputs: [], warnings: [] });
  });

  it('drops the mask with an unsupported warning, since the API has no mask parameter', () => {
    const plan = planSiliconFlowCall(callOptions({ images: [photo], mask }));
    expect(plan.inputs).toEqual([photo]);
    expect(plan.warnings).toEqual([expect.objectContaining({ type: 'unsupported', feature: 'mask' })]);
  });

  it('keeps the first three inputs of four, with a warning', () => {
    const plan = planSiliconFlowCall(callOptions({ images: [photo, second, third, fourth] }));
    expect(plan.inputs).toEqual([photo, second, third]);
    expect(plan.warnings).toEqual([expect.objectContaining({ type: 'unsupported', feature: 'image' })]);
    expect(plan.warnings[0]!.message).toContain('first 3 of 4');
  });

  it('warns that images of one batch cannot carry their own seeds', () => {
    const plan = planSiliconFlowCall(callOptions({ n: 3, seed: 10 }));
    expect(plan.warnings).toEqual([expect.objectContaining({ type: 'unsupported', feature: 'seed' })]);
  });

  it('warns when a transparent background is asked for', () => {
    expect(planSiliconFlowCall(callOptions({ background: 'transparent' })).warnings).toEqual([
      expect.objectContaining({ type: 'unsupported', feature: 'background' }),
    ]);
  });
});

describe('error bodies', () => {
  it.each([
    ['SiliconFlow', '{"code":20012,"message":"Model does not exist. Please check it carefully.","data":null}', 'Model does not exist. Please check it carefully.', '20012'],
    ['OpenAI-style', '{"error":{"message":"bad size","code":"invalid_size"}}', 'bad size', 'invalid_size'],
    ['plain text', 'Invalid token', 'Invalid token', undefined],
    ['empty JSON', '{}', undefined, undefined],
  ])('reads a %s body', (_name, text, message, code) => {
    expect(extractSiliconFlowError(text)).toEqual({ message, code });
  });

  it.each([
    ['The prompt contains sensitive content', true],
    ['Input image is unsafe', true],
    ['NSFW content detected', true],
    ['Your request violates our content policy', true],
    ['输入内容包含敏感词', true],
    ['Model does not exist. Please check it carefully.', false],
    ['image_size must look like 1024x1024', false],
    ['Insufficient balance', false],
  ])('%s → moderation %s', (message, expected) => {
    expect(isSiliconFlowModeration({ message, code: '20015' })).toBe(expected);
  });
});

describe('generation against the fake', () => {
  it('sends the body with the bearer key, downloads the image, keeps the trace id', async () => {
    const lines: string[] = [];
    const { server, backend } = await setup({}, { requireApiKey: KEY }, lines);
    const result = await backend.generate(callOptions({ seed: 100, negativePrompt: 'text' }));
    expect(result.images).toHaveLength(1);
    expect(await sharp(result.images[0]!).metadata()).toMatchObject({ format: 'png', width: 64, height: 48 });
    expect(await pixelAt(result.images[0]!)).toEqual(colourForSeed(100));
    expect(result.warnings).toEqual([]);

    const call = server.requests.find((r) => r.path === '/v1/images/generations')!;
    expect(call.headers.authorization).toBe(`Bearer ${KEY}`);
    expect(call.headers['content-type']).toBe('application/json');
    expect(call.json).toEqual({ model: 'Kwai-Kolors/Kolors', prompt: 'a red fox in snow', negative_prompt: 'text', image_size: '64x48', batch_size: 1, seed: 100 });

    expect(result.response.headers).toEqual({ [TRACE_ID_HEADER]: call.traceId });
    const logged = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.message === 'siliconflow call answered');
    expect(logged).toMatchObject({ traceId: call.traceId, seed: 100, images: 1 });
    expect(lines.join('')).not.toContain(KEY);
  });

  it('reads the key from apiKeyEnv', async () => {
    process.env.PIXELD_TEST_SF_KEY = KEY;
    try {
      const server = await startFakeSiliconFlowServer({ requireApiKey: KEY });
      servers.push(server);
      const config = siliconflowBackendSchema.parse({ id: 'sf', type: 'siliconflow', baseUrl: server.url, apiKeyEnv: 'PIXELD_TEST_SF_KEY' });
      const backend = createSiliconFlowBackend(config, { logger: createLogger({ level: 'error', stream: new PassThrough() }) });
      backends.push(backend);
      expect((await backend.generate(callOptions())).images).toHaveLength(1);
    } finally {
      delete process.env.PIXELD_TEST_SF_KEY;
    }
  });

  it('batch of three on a batch model: three distinct images, downloaded together, with the seed warning', async () => {
    const { server, backend } = await setup({ maxImagesPerCall: 4 });
    server.setBehaviour({ downloadDelayMs: 150 });
    const result = await backend.generate(callOptions({ n: 3, seed: 5 }));
    expect(await Promise.all(result.images.map((i) => pixelAt(i)))).toEqual([colourForSeed(5), colourForSeed(6), colourForSeed(7)]);
    expect(server.maxConcurrentDownloads).toBe(3);
    expect(result.warnings.map((w) => w.feature)).toEqual(['seed']);
  });

  it('returns what a model without batching made when asked for more; the runner tops up', async () => {
    const { backend } = await setup({ maxImagesPerCall: 4 });
    const result = await backend.generate(callOptions({ model: 'Qwen/Qwen-Image-Edit-2509', n: 2 }));
    expect(result.images).toHaveLength(1);
  });

  it('warns when the backend used another seed than asked', async () => {
    const { server, backend } = await setup();
    server.setBehaviour({ seedOverride: 777 });
    const result = await backend.generate(callOptions({ seed: 1 }));
    expect(result.warnings).toEqual([expect.objectContaining({ feature: 'seed', message: expect.stringContaining('777') })]);
  });

  it('keeps only n images when more come back, with a warning, and downloads only those', async () => {
    const { server, backend } = await setup();
    const first = await backend.generate(callOptions({ seed: 1 }));
    await backend.generate(callOptions({ seed: 2 }));
    const urls = server.requests.filter((r) => r.path.startsWith('/files/')).map((r) => `${server.origin}${r.path}`);
    expect(urls).toHaveLength(2);
    server.setNextFailures(1, { status: 200, body: { images: urls.map((url) => ({ url })), timings: { inference: 1 }, seed: 42 } });
    const result = await backend.generate(callOptions({ n: 1 }));
    expect(result.images).toHaveLength(1);
    expect(Buffer.from(result.images[0]!).equals(Buffer.from(first.images[0]!))).toBe(true);
    expect(result.warnings).toEqual([expect.objectContaining({ message: expect.stringContaining('kept the first 1') })]);
    expect(server.requests.filter((r) => r.path.startsWith('/files/'))).toHaveLength(3);
  });
});

describe('edits against the fake', () => {
  it('sends the inputs as data URLs of their exact bytes and leaves the mask out', async () => {
    const { server, backend } = await setup();
    const result = await backend.generate(callOptions({ model: 'Qwen/Qwen-Image-Edit-2509', images: [photo, second], mask, seed: 3 }));
    expect(await pixelAt(result.images[0]!)).toEqual(colourForSeed(3));
    const sent = server.generationBodies()[0]!;
    expect(sent.image).toBe(`data:image/png;base64,${(await readFile(photo.path)).toString('base64')}`);
    expect(sent.image2).toBe(`data:image/jpeg;base64,${(await readFile(second.path)).toString('base64')}`);
    expect(sent).not.toHaveProperty('image3');
    expect(Object.keys(sent).some((k) => k.includes('mask'))).toBe(false);
    expect(result.warnings).toEqual([expect.objectContaining({ type: 'unsupported', feature: 'mask' })]);
  });

  it('sends only three of four inputs', async () => {
    const { server, backend } = await setup();
    const result = await backend.generate(callOptions({ model: 'Qwen/Qwen-Image-Edit-2509', images: [photo, second, third, fourth] }));
    const sent = server.generationBodies()[0]!;
    expect(sent.image3).toBe(`data:image/webp;base64,${(await readFile(third.path)).toString('base64')}`);
    expect(JSON.stringify(sent)).not.toContain((await readFile(fourth.path)).toString('base64'));
    expect(result.warnings.map((w) => w.feature)).toEqual(['image']);
  });
});

describe('upstream errors', () => {
  it('a {code,message,data:null} 400 is a rejection with message, code and trace id', async () => {
    const { server, backend } = await setup();
    const err = await backendError(backend.generate(callOptions({ model: 'no/such-model' })));
    expect(err.kind).toBe('rejected');
    expect(err.retryable).toBe(false);
    expect(err.status).toBe(400);
    expect(err.message).toBe(`Model does not exist. Please check it carefully. (code ${CODE_MODEL_NOT_FOUND})`);
    const traceId = server.requests.find((r) => r.path === '/v1/images/generations')!.traceId!;
    expect(err.details).toEqual(['Status: 400', `URL: ${server.url}/images/generations`, `Code: ${CODE_MODEL_NOT_FOUND}`, `Trace-Id: ${traceId}`]);
  });

  it('a 401 for a wrong key is a rejection', async () => {
    const { backend } = await setup({ apiKey: 'sk-wrong' });
    const err = await backendError(backend.generate(callOptions()));
    expect([err.kind, err.status, err.message]).toEqual(['rejected', 401, 'Invalid token']);
  });

  it('a content-safety message is a moderation block', async () => {
    const { server, backend } = await setup();
    server.setNextFailures(1, { status: 400, code: 20015, message: 'The prompt contains sensitive words' });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.kind).toBe('moderation');
  });

  it('sanitises the upstream message', async () => {
    const { server, backend } = await setup();
    server.setNextFailures(1, { status: 400, code: 20015, message: `bad image\n${'A'.repeat(200)} at /srv/app/handler.py` });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.message).toBe('bad image [data] at [path] (code 20015)');
  });

  it.each([429, 500, 503, 504])('HTTP %i is unavailable and retryable, with Retry-After', async (status) => {
    const { server, backend } = await setup();
    server.setNextFailures(1, { status, code: 50000, message: 'busy', headers: { 'retry-after': '3' } });
    const err = await backendError(backend.generate(callOptions()));
    expect([err.kind, err.retryable, err.status, err.retryAfterMs]).toEqual(['unavailable', true, status, 3_000]);
    expect(err.message).toBe(`backend unavailable (HTTP ${status}): busy`);
    expect(err.details.some((d) => d.startsWith('Trace-Id: '))).toBe(true);
  });

  it('connection refused is unavailable', async () => {
    const port = await freePort();
    const backend = createSiliconFlowBackend(makeConfig(`http://127.0.0.1:${port}/v1`), { logger: createLogger({ level: 'error', stream: new PassThrough() }) });
    backends.push(backend);
    const err = await backendError(backend.generate(callOptions()));
    expect(err.kind).toBe('unavailable');
    expect(err.message).toContain('ECONNREFUSED');
  });

  it('a backend that dies mid-request or mid-response is unavailable', async () => {
    const { server, backend } = await setup();
    server.setBehaviour({ dieMidRequest: true });
    expect((await backendError(backend.generate(callOptions()))).kind).toBe('unavailable');
    server.setBehaviour({ dieMidRequest: false, dieMidResponse: true });
    expect((await backendError(backend.generate(callOptions()))).kind).toBe('unavailable');
  });
});

describe('bad responses and result URLs', () => {
  it('an expired result URL is a bad response that says so, without the signed query', async () => {
    const { server, backend } = await setup();
    server.setBehaviour({ urlTtlMs: 0 });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.kind).toBe('bad_response');
    expect(err.message).toMatch(/^result image URL answered HTTP 404 \d+ ms after the backend gave it: expired or withdrawn$/);
    expect(err.details[1]).toMatch(new RegExp(`^URL: ${server.origin}/files/[\\w-]+\\.png$`));
    expect(JSON.stringify(err.details)).not.toContain('Signature');
    expect(err.details.some((d) => d.startsWith('Trace-Id: '))).toBe(true);
  });

  it('downloads at once: a URL valid for a short while is still fetched in time', async () => {
    const { server, backend } = await setup();
    server.setBehaviour({ urlTtlMs: 1_000 });
    const result = await backend.generate(callOptions({ seed: 9 }));
    expect(await pixelAt(result.images[0]!)).toEqual(colourForSeed(9));
    const name = server.requests.find((r) => r.path.startsWith('/files/'))!.path.slice('/files/'.length).split('?')[0]!;
    expect(Buffer.from(result.images[0]!).equals(server.files.get(name)!)).toBe(true);
  });

  it('a URL serving garbage hands the bytes on as they are: the runner sniffs and refuses them', async () => {
    const { server, backend } = await setup();
    server.setBehaviour({ garbageUrls: true });
    const result = await backend.generate(callOptions());
    await expect(sharp(result.images[0]!).metadata()).rejects.toThrow();
  });

  it('a result over maxDownloadBytes is refused', async () => {
    const { backend } = await setup({ maxDownloadBytes: 50 });
    const err = await backendError(backend.generate(callOptions()));
    expect(err.kind).toBe('bad_response');
    expect(err.message).toContain('maxDownloadBytes');
  });

  it.each([
    ['no images', { images: [], timings: { inference: 1 }, seed: 1 }, 'backend answered 200 without images'],
    ['an error in a 200', { code: 50603, message: 'System is too busy now', data: null }, 'backend answered 200 without images: System is too busy now'],
    ['an entry without url', { images: [{}], seed: 1 }, 'images[0] has no url'],
    ['a file: URL', { images: [{ url: 'file:///etc/passwd' }], seed: 1 }, 'images[0].url has unsupported scheme file:'],
    ['not JSON', 'upstream connect error', 'backend response is not valid JSON'],
  ])('200 with %s is a bad response', async (_name, body, message) => {
    const { server, backend } = await setup();
    server.setNextFailures(1, { status: 200, body });
    const err = await backendError(backend.generate(callOptions()));
    expect([err.kind, err.message]).toEqual(['bad_response', message]);
  });
});

describe('deadlines and cancellation', () => {
  it('times out at the deadline, not undici’s default, and drops the connection', async () => {
    const { server, backend } = await setup();
    server.setBehaviour({ hang: true });
    const disconnected = server.nextDisconnect();
    const started = Date.now();
    const err = await backendError(backend.generate(callOptions({ deadlineMs: Date.now() + 300 })));
    expect(err.kind).toBe('timeout');
    expect(Date.now() - started).toBeLessThan(3_000);
    expect((await disconnected).path).toBe('/v1/images/generations');
  });

  it('makes no call when the deadline has passed', async () => {
    const { server, backend } = await setup();
    expect((await backendError(backend.generate(callOptions({ deadlineMs: Date.now() - 1 })))).kind).toBe('timeout');
    expect(server.requests).toHaveLength(0);
  });

  it('an abort rethrows the runner’s reason and the server sees the disconnect', async () => {
    const { server, backend } = await setup();
    server.setBehaviour({ hang: true });
    const controller = new AbortController();
    const disconnected = server.nextDisconnect();
    const pending = backend.generate(callOptions({ signal: controller.signal }));
    await expect.poll(() => server.requests.length).toBe(1);
    const reason = new DOMException('job cancelled', 'AbortError');
    controller.abort(reason);
    expect(await rejection(pending)).toBe(reason);
    expect((await disconnected).disconnected).toBe(true);
  });

  it('aborts result downloads too', async () => {
    const { server, backend } = await setup();
    server.setBehaviour({ downloadDelayMs: 10_000 });
    const controller = new AbortController();
    const disconnected = server.nextDisconnect();
    const pending = backend.generate(callOptions({ signal: controller.signal }));
    await expect.poll(() => server.requests.some((r) => r.path.startsWith('/files/'))).toBe(true);
    const reason = new DOMException('deadline', 'TimeoutError');
    controller.abort(reason);
    expect(await rejection(pending)).toBe(reason);
    expect((await disconnected).path).toMatch(/^\/files\//);
  });
});

describe('checkHealth', () => {
  it('GETs healthPath with the key', async () => {
    const { server, backend } = await setup();
    await backend.checkHealth(AbortSignal.timeout(5_000));
    expect(server.requests[0]).toMatchObject({ method: 'GET', path: '/v1/models' });
    expect(server.requests[0]!.headers.authorization).toBe(`Bearer ${KEY}`);
  });

  it('fails when the API refuses the key', async () => {
    const { backend } = await setup({ apiKey: 'sk-wrong' });
    const err = await backendError(backend.checkHealth(AbortSignal.timeout(5_000)));
    expect([err.kind, err.status]).toEqual(['unavailable', 401]);
  });
});
