import { randomBytes } from 'node:crypto';
import { readdir, readlink } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CODES, type ErrorCode } from '../../src/errors.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/**
 * Every validation rule of the image endpoints, against a real daemon: each bad request gets its status,
 * the OpenAI error shape, x-request-id and `x-should-retry: false`, and leaves nothing behind (no job row,
 * no blob, no temp file).
 */

const KiB = 1024;
const MAX_BODY_BYTES = 64 * KiB;
const MAX_FILE_BYTES = 32 * KiB;
const MAX_INPUT_PIXELS = 4_000_000;
const MAX_PROMPT_CHARS = 100;

let t: TestDaemon;
let db: Database.Database;

interface Fixtures {
  png64: Buffer;
  png8: Buffer;
  jpeg64: Buffer;
  webp64: Buffer;
  mask64: Buffer;
  mask32: Buffer;
  maskNoAlpha64: Buffer;
  maskJpeg64: Buffer;
  gif: Buffer;
  bmp: Buffer;
  noisyPng: Buffer;
  bomb: Buffer;
}
let fx: Fixtures;

beforeAll(async () => {
  t = await startTestDaemon({
    config: {
      server: { maxBodyBytes: MAX_BODY_BYTES },
      limits: { maxPromptChars: MAX_PROMPT_CHARS, maxInputPixels: MAX_INPUT_PIXELS, maxInputImageBytes: MAX_FILE_BYTES },
      backends: [{ id: 'reference', type: 'reference', concurrency: 4, latencyMsPerImage: 0 }],
      models: [
        {
          id: 'pix-1',
          backend: 'reference',
          capabilities: ['generation', 'edit'],
          sizes: ['64x64', '96x64', '128x128'],
          defaultSize: '128x128',
          maxN: 3,
        },
        { id: 'gen-only', backend: 'reference', capabilities: ['generation'], sizes: ['64x64'], maxN: 1 },
      ],
    },
  });
  db = new Database(path.join(t.dataDir, 'pixeld.sqlite'), { readonly: true, fileMustExist: true });

  const solid = (w: number, h: number, channels: 3 | 4 = 3) =>
    sharp({ create: { width: w, height: h, channels, background: { r: 200, g: 40, b: 90, alpha: channels === 4 ? 0 : 1 } } });
  fx = {
    png64: await solid(64, 64).png().toBuffer(),
    png8: await solid(8, 8).png().toBuffer(),
    jpeg64: await solid(64, 64).jpeg().toBuffer(),
    webp64: await solid(64, 64).webp().toBuffer(),
    mask64: await solid(64, 64, 4).png().toBuffer(),
    mask32: await solid(32, 32, 4).png().toBuffer(),
    maskNoAlpha64: await solid(64, 64).png().toBuffer(),
    maskJpeg64: await solid(64, 64).jpeg().toBuffer(),
    gif: await solid(16, 16).gif().toBuffer(),
    bmp: bmp2x2(),
    noisyPng: await sharp({
      create: { width: 96, height: 96, channels: 3, background: { r: 0, g: 0, b: 0 }, noise: { type: 'gaussian', mean: 128, sigma: 60 } },
    })
      .png()
      .toBuffer(),
    // A real 10000x10000 one-bit PNG: ~12 KB on the wire, 100 M pixels once decoded.
    bomb: await sharp({ create: { width: 10_000, height: 10_000, channels: 3, background: { r: 0, g: 0, b: 0 } }, limitInputPixels: false })
      .png({ palette: true, colours: 2, compressionLevel: 9 })
      .toBuffer(),
  };
  expect(fx.noisyPng.length).toBeGreaterThan(4 * KiB);
  expect(fx.bomb.length).toBeLessThan(MAX_FILE_BYTES);
}, 120_000);

afterAll(async () => {
  db?.close();
  await t?.close();
});

/** A 2x2 24-bit Windows bitmap, written by hand (sharp cannot write BMP). */
function bmp2x2(): Buffer {
  const pixels = Buffer.alloc(16, 0x7f); // 2 rows of 6 bytes, each padded to 8
  const header = Buffer.alloc(54);
  header.write('BM', 0, 'ascii');
  header.writeUInt32LE(54 + pixels.length, 2);
  header.writeUInt32LE(54, 10);
  header.writeUInt32LE(40, 14);
  header.writeInt32LE(2, 18);
  header.writeInt32LE(2, 22);
  header.writeUInt16LE(1, 26);
  header.writeUInt16LE(24, 28);
  header.writeUInt32LE(pixels.length, 34);
  header.writeInt32LE(2835, 38);
  header.writeInt32LE(2835, 42);
  return Buffer.concat([header, pixels]);
}

// ---------------------------------------------------------------------------------------------------------
// HTTP helpers. node:http rather than fetch: a server that answers 413 before reading the body must still be
// seen answering, whatever happens to the rest of the upload.

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  json: any;
}

interface SendOptions {
  headers?: Record<string, string>;
  body?: Buffer | string;
  /** Sent with chunked transfer encoding (no Content-Length). */
  chunks?: Buffer[];
}

function send(urlPath: string, options: SendOptions = {}): Promise<Reply> {
  return new Promise<Reply>((resolve, reject) => {
    const req = http.request(`${t.url}${urlPath}`, { method: 'POST', headers: options.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
    });
    // Once the answer has arrived, a reset of the rest of the upload is no failure.
    req.on('error', reject);
    if (options.chunks) {
      const parts = options.chunks;
      void (async () => {
        for (const chunk of parts) {
          if (req.destroyed) return;
          req.write(chunk);
          await sleep(1);
        }
        req.end();
      })();
    } else {
      req.end(options.body);
    }
  });
}

const postJson = (urlPath: string, body: unknown, headers: Record<string, string> = {}) =>
  send(urlPath, {
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });

type Part = [name: string, value: string] | [name: string, file: Buffer, filename: string, type?: string];

async function encodeForm(parts: Part[]): Promise<{ body: Buffer; contentType: string }> {
  const form = new FormData();
  for (const part of parts) {
    if (part.length === 2) form.append(part[0], part[1]);
    else form.append(part[0], new Blob([new Uint8Array(part[1])], { type: part[3] ?? 'application/octet-stream' }), part[2]);
  }
  const request = new Request('http://form.invalid/', { method: 'POST', body: form });
  return { body: Buffer.from(await request.arrayBuffer()), contentType: request.headers.get('content-type')! };
}

async function postForm(urlPath: string, parts: Part[]): Promise<Reply> {
  const { body, contentType } = await encodeForm(parts);
  return send(urlPath, { headers: { 'content-type': contentType }, body });
}

const GEN = '/v1/images/generations';
const EDIT = '/v1/images/edits';
const dataUrl = (bytes: Buffer, type = 'image/png') => `data:${type};base64,${bytes.toString('base64')}`;

// ---------------------------------------------------------------------------------------------------------
// What a request leaves behind.

interface Trace {
  jobs: number;
  tmp: string[];
  blobs: string[];
}

async function trace(): Promise<Trace> {
  const { n } = db.prepare('SELECT COUNT(*) AS n FROM jobs').get() as { n: number };
  const tmp = await readdir(t.daemon.blobs.tmpDir);
  const blobs: string[] = [];
  for await (const b of t.daemon.blobs.list()) blobs.push(b.sha256);
  return { jobs: n, tmp: tmp.sort(), blobs: blobs.sort() };
}

/** No new job, no new blob, and the temp dir empty again (cleanup may finish just after the answer). */
async function expectNoTrace(before: Trace): Promise<void> {
  const deadline = Date.now() + 2_000;
  let after = await trace();
  while (after.tmp.length > 0 && Date.now() < deadline) {
    await sleep(25);
    after = await trace();
  }
  expect(after.tmp, 'temp files left behind').toEqual([]);
  expect(after.jobs, 'a job was created').toBe(before.jobs);
  expect(after.blobs, 'blobs were stored').toEqual(before.blobs);
}

function expectError(res: Reply, status: number, code: ErrorCode, param?: string | null): void {
  expect({ status: res.status, code: res.json?.error?.code, message: res.json?.error?.message }).toMatchObject({ status, code });
  expect(ERROR_CODES[code].status).toBe(status);
  expect(Object.keys(res.json).sort()).toEqual(['error']);
  expect(Object.keys(res.json.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(res.json.error.type).toBe(ERROR_CODES[code].type);
  expect(typeof res.json.error.message).toBe('string');
  expect(res.json.error.message.length).toBeGreaterThan(0);
  if (param !== undefined) expect(res.json.error.param).toBe(param);
  else expect(res.json.error.param === null || typeof res.json.error.param === 'string').toBe(true);
  expect(res.headers['x-request-id']).toMatch(/^\S+$/);
  expect(res.headers['x-should-retry']).toBe('false');
  expect(res.headers['content-type']).toMatch(/^application\/json/);
}

async function expectRejected(request: () => Promise<Reply>, status: number, code: ErrorCode, param?: string | null): Promise<Reply> {
  const before = await trace();
  expect(before.tmp).toEqual([]);
  const res = await request();
  expectError(res, status, code, param);
  await expectNoTrace(before);
  return res;
}

async function expectImages(res: Reply, count: number, size?: string): Promise<void> {
  expect({ status: res.status, body: res.status === 200 ? undefined : res.json }).toEqual({ status: 200, body: undefined });
  expect(res.json.data).toHaveLength(count);
  if (size !== undefined) expect(res.json.size).toBe(size);
  for (const item of res.json.data as Array<{ b64_json: string }>) {
    const meta = await sharp(Buffer.from(item.b64_json, 'base64')).metadata();
    expect(`${meta.width}x${meta.height}`).toBe(res.json.size);
  }
  expect((await trace()).tmp).toEqual([]);
}

// ---------------------------------------------------------------------------------------------------------

describe('JSON generations', () => {
  it('accepts a plain request and answers in the ImagesResponse shape', async () => {
    const res = await postJson(GEN, { prompt: 'a red square', size: '64x64' });
    await expectImages(res, 1, '64x64');
    expect(res.headers['x-request-id']).toMatch(/\S/);
  });

  it('invalid JSON → 400 invalid_json', async () => {
    await expectRejected(() => postJson(GEN, '{"prompt": "a cat",'), 400, 'invalid_json');
    await expectRejected(() => postJson(GEN, ''), 400, 'invalid_json');
  });

  it('a body that is not an object → 400 invalid_request', async () => {
    for (const body of ['[1,2]', '"a cat"', 'null', '42']) {
      await expectRejected(() => postJson(GEN, body), 400, 'invalid_request');
    }
  });

  it('missing, empty or non-string prompt → 400 naming prompt', async () => {
    await expectRejected(() => postJson(GEN, { size: '64x64' }), 400, 'invalid_request', 'prompt');
    await expectRejected(() => postJson(GEN, { prompt: '' }), 400, 'invalid_request', 'prompt');
    await expectRejected(() => postJson(GEN, { prompt: 42 }), 400, 'invalid_request', 'prompt');
  });

  it('a prompt over limits.maxPromptChars → 400 prompt_too_long; one at the limit passes', async () => {
    await expectRejected(() => postJson(GEN, { prompt: 'x'.repeat(MAX_PROMPT_CHARS + 1) }), 400, 'prompt_too_long', 'prompt');
    await expectImages(await postJson(GEN, { prompt: 'x'.repeat(MAX_PROMPT_CHARS), size: '64x64' }), 1);
  });

  it('n outside 1–10 or above the model maxN → 400 invalid_n', async () => {
    await expectRejected(() => postJson(GEN, { prompt: 'p', n: 0 }), 400, 'invalid_n', 'n');
    await expectRejected(() => postJson(GEN, { prompt: 'p', n: 11 }), 400, 'invalid_n', 'n');
    await expectRejected(() => postJson(GEN, { prompt: 'p', n: 1.5 }), 400, 'invalid_n', 'n');
    await expectRejected(() => postJson(GEN, { prompt: 'p', n: 'two' }), 400, 'invalid_n', 'n');
    // pix-1 has maxN 3
    const res = await expectRejected(() => postJson(GEN, { prompt: 'p', n: 4 }), 400, 'invalid_n', 'n');
    expect(res.json.error.message).toContain('3');
  });

  it('n as a string is accepted', async () => {
    await expectImages(await postJson(GEN, { prompt: 'two please', n: '2', size: '64x64' }), 2, '64x64');
  });

  it('a size outside the model list → 400 invalid_size', async () => {
    await expectRejected(() => postJson(GEN, { prompt: 'p', size: '1024x1024' }), 400, 'invalid_size', 'size');
    await expectRejected(() => postJson(GEN, { prompt: 'p', size: 'huge' }), 400, 'invalid_size', 'size');
  });

  it('size auto (and no size) resolve to the model default, and the response says which', async () => {
    await expectImages(await postJson(GEN, { prompt: 'p', size: 'auto' }), 1, '128x128');
    await expectImages(await postJson(GEN, { prompt: 'p' }), 1, '128x128');
  });

  it('an unknown model → 404 model_not_found', async () => {
    await expectRejected(() => postJson(GEN, { prompt: 'p', model: 'dall-e-9' }), 404, 'model_not_found', 'model');
  });

  it('stream: true (also as a string) answers an event stream; partial_images outside 0–3 or without a stream → 400', async () => {
    const streamed = await postJson(GEN, { prompt: 'p', stream: 'true', size: '64x64' });
    expect(streamed.status).toBe(200);
    expect(streamed.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(streamed.text).toMatch(/^event: image_generation\.completed\ndata: \{"type":"image_generation\.completed"/);
    await expectRejected(() => postJson(GEN, { prompt: 'p', stream: true, partial_images: 4 }), 400, 'invalid_request', 'partial_images');
    await expectRejected(() => postJson(GEN, { prompt: 'p', partial_images: '1' }), 400, 'invalid_request', 'partial_images');
    await expectImages(await postJson(GEN, { prompt: 'p', stream: false, size: '64x64' }), 1);
  });

  it('a transparent background with jpeg output → 400', async () => {
    await expectRejected(
      () => postJson(GEN, { prompt: 'p', background: 'transparent', output_format: 'jpeg' }),
      400,
      'invalid_request',
      'background',
    );
  });

  it('bad enum values → 400 naming the field', async () => {
    await expectRejected(() => postJson(GEN, { prompt: 'p', output_format: 'gif' }), 400, 'invalid_request', 'output_format');
    await expectRejected(() => postJson(GEN, { prompt: 'p', quality: 'ultra' }), 400, 'invalid_request', 'quality');
    await expectRejected(() => postJson(GEN, { prompt: 'p', response_format: 'png' }), 400, 'invalid_request', 'response_format');
  });

  it('an extension field the model does not declare → 400 unsupported_parameter; a declared one is accepted', async () => {
    await expectRejected(() => postJson(GEN, { prompt: 'p', num_inference_steps: 20 }), 400, 'unsupported_parameter', 'num_inference_steps');
    await expectRejected(() => postJson(GEN, { prompt: 'p', guidance_scale: 7.5 }), 400, 'unsupported_parameter', 'guidance_scale');
    await expectImages(await postJson(GEN, { prompt: 'p', seed: 1234, negative_prompt: 'blur', size: '64x64' }), 1);
    await expectRejected(() => postJson(GEN, { prompt: 'p', seed: -1 }), 400, 'invalid_request', 'seed');
  });

  it('other unknown fields are ignored', async () => {
    await expectImages(await postJson(GEN, { prompt: 'p', size: '64x64', foo: 'bar', extra_body: { a: 1 }, loras: [] }), 1);
  });

  it('a Content-Type other than JSON or multipart → 415', async () => {
    await expectRejected(
      () => send(GEN, { headers: { 'content-type': 'text/plain' }, body: JSON.stringify({ prompt: 'p' }) }),
      415,
      'unsupported_media_type',
    );
    await expectRejected(() => send(GEN, { body: JSON.stringify({ prompt: 'p' }) }), 415, 'unsupported_media_type');
  });

  it('a body over server.maxBodyBytes → 413, declared or streamed', async () => {
    const big = JSON.stringify({ prompt: 'p', pad: 'x'.repeat(MAX_BODY_BYTES) });
    await expectRejected(() => postJson(GEN, big), 413, 'payload_too_large');
    const chunks = Array.from({ length: 40 }, () => Buffer.from('x'.repeat(4 * KiB)));
    chunks.unshift(Buffer.from('{"prompt":"p","pad":"'));
    await expectRejected(() => send(GEN, { headers: { 'content-type': 'application/json' }, chunks }), 413, 'payload_too_large');
  });
});

describe('multipart edits', () => {
  it('accepts a single `image`', async () => {
    await expectImages(await postForm(EDIT, [['prompt', 'paint it'], ['image', fx.png64, 'a.png', 'image/png']]), 1);
  });

  it('accepts jpeg and webp inputs, whatever the file name says', async () => {
    await expectImages(await postForm(EDIT, [['prompt', 'p'], ['image', fx.jpeg64, 'a.png']]), 1);
    await expectImages(await postForm(EDIT, [['prompt', 'p'], ['image[]', fx.webp64, 'photo.bin']]), 1);
  });

  it('accepts repeated `image[]`: 2 and 16 images; 17 → 400 too_many_images', async () => {
    await expectImages(
      await postForm(EDIT, [['prompt', 'p'], ['image[]', fx.png64, 'a.png'], ['image[]', fx.png8, 'b.png'], ['size', '64x64']]),
      1,
      '64x64',
    );
    const images = (count: number): Part[] => Array.from({ length: count }, (_, i) => ['image[]', fx.png8, `${i}.png`] as Part);
    await expectImages(await postForm(EDIT, [['prompt', 'p'], ['size', '64x64'], ...images(16)]), 1);
    await expectRejected(() => postForm(EDIT, [['prompt', 'p'], ...images(17)]), 400, 'too_many_images');
    // Beyond the multipart file limit (16 images + a mask) the answer is the same.
    await expectRejected(() => postForm(EDIT, [['prompt', 'p'], ...images(18)]), 400, 'too_many_images');
  });

  it('accepts `mask` and `mask[]`', async () => {
    await expectImages(await postForm(EDIT, [['prompt', 'p'], ['image', fx.png64, 'a.png'], ['mask', fx.mask64, 'm.png']]), 1);
    await expectImages(await postForm(EDIT, [['prompt', 'p'], ['image[]', fx.png64, 'a.png'], ['mask[]', fx.mask64, 'm.png']]), 1);
  });

  it('takes numbers and booleans as strings', async () => {
    await expectImages(
      await postForm(EDIT, [
        ['prompt', 'p'],
        ['image', fx.png64, 'a.png'],
        ['n', '2'],
        ['size', '64x64'],
        ['stream', 'false'],
        ['output_compression', '80'],
        ['seed', '7'],
      ]),
      2,
      '64x64',
    );
    await expectRejected(() => postForm(EDIT, [['prompt', 'p'], ['image', fx.png64, 'a.png'], ['n', '0']]), 400, 'invalid_n', 'n');
    const streamed = await postForm(EDIT, [['prompt', 'p'], ['image', fx.png64, 'a.png'], ['stream', 'true'], ['partial_images', '2'], ['size', '64x64']]);
    expect(streamed.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(streamed.text).toMatch(/^event: image_edit\.completed\n/);
    await expectRejected(() => postForm(EDIT, [['prompt', 'p'], ['image', fx.png64, 'a.png'], ['stream', 'true'], ['n', '2']]), 400, 'invalid_n', 'n');
  });

  it('a non-image file named .png → 400 invalid_image', async () => {
    await expectRejected(
      () => postForm(EDIT, [['prompt', 'p'], ['image', Buffer.from('hello, I am not a picture'), 'x.png', 'image/png']]),
      400,
      'invalid_image',
      'image[0]',
    );
  });

  it('GIF and BMP → 400 invalid_image', async () => {
    await expectRejected(() => postForm(EDIT, [['prompt', 'p'], ['image', fx.gif, 'x.gif', 'image/gif']]), 400, 'invalid_image');
    await expectRejected(() => postForm(EDIT, [['prompt', 'p'], ['image', fx.bmp, 'x.bmp', 'image/bmp']]), 400, 'invalid_image');
    // Also as the second image.
    await expectRejected(
      () => postForm(EDIT, [['prompt', 'p'], ['image[]', fx.png64, 'a.png'], ['image[]', fx.gif, 'b.png']]),
      400,
      'invalid_image',
      'image[1]',
    );
  });

  it('a truncated PNG (its first half) → 400 invalid_image', async () => {
    const half = fx.noisyPng.subarray(0, Math.floor(fx.noisyPng.length / 2));
    await expectRejected(() => postForm(EDIT, [['prompt', 'p'], ['image', half, 'half.png', 'image/png']]), 400, 'invalid_image', 'image[0]');
  });

  it('a decompression bomb → 400 image_too_large, refused from its header without decoding', async () => {
    const started = Date.now();
    const res = await expectRejected(
      () => postForm(EDIT, [['prompt', 'p'], ['image', fx.bomb, 'bomb.png', 'image/png']]),
      400,
      'image_too_large',
      'image[0]',
    );
    expect(res.json.error.message).toContain('10000x10000');
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('mask rules: JPEG → invalid_mask, PNG without alpha → invalid_mask, other size → mask_size_mismatch', async () => {
    await expectRejected(
      () => postForm(EDIT, [['prompt', 'p'], ['image', fx.png64, 'a.png'], ['mask', fx.maskJpeg64, 'm.png']]),
      400,
      'invalid_mask',
      'mask',
    );
    await expectRejected(
      () => postForm(EDIT, [['prompt', 'p'], ['image', fx.png64, 'a.png'], ['mask', fx.maskNoAlpha64, 'm.png']]),
      400,
      'invalid_mask',
      'mask',
    );
    await expectRejected(
      () => postForm(EDIT, [['prompt', 'p'], ['image', fx.png64, 'a.png'], ['mask', fx.mask32, 'm.png']]),
      400,
      'mask_size_mismatch',
      'mask',
    );
    // The mask is compared with the first image, not the others.
    await expectRejected(
      () => postForm(EDIT, [['prompt', 'p'], ['image[]', fx.png8, 'a.png'], ['image[]', fx.png64, 'b.png'], ['mask', fx.mask64, 'm.png']]),
      400,
      'mask_size_mismatch',
      'mask',
    );
    await expectRejected(
      () => postForm(EDIT, [['prompt', 'p'], ['image', fx.png64, 'a.png'], ['mask', fx.mask64, 'm.png'], ['mask[]', fx.mask64, 'n.png']]),
      400,
      'invalid_mask',
      'mask',
    );
  });

  it('an unexpected file field → 400 naming it', async () => {
    await expectRejected(() => postForm(EDIT, [['prompt', 'p'], ['photo', fx.png64, 'a.png']]), 400, 'invalid_request', 'photo');
    await expectRejected(
      () => postForm(EDIT, [['prompt', 'p'], ['image', fx.png64, 'a.png'], ['photo', fx.png64, 'b.png']]),
      400,
      'invalid_request',
      'photo',
    );
  });

  it('`image` or `mask` sent as a text field → 400', async () => {
    await expectRejected(() => postForm(EDIT, [['prompt', 'p'], ['image', dataUrl(fx.png64)]]), 400, 'invalid_request', 'image');
    await expectRejected(
      () => postForm(EDIT, [['prompt', 'p'], ['image', fx.png64, 'a.png'], ['mask', 'not a file']]),
      400,
      'invalid_request',
      'mask',
    );
  });

  it('an edit without any image → 400', async () => {
    await expectRejected(() => postForm(EDIT, [['prompt', 'p']]), 400, 'invalid_request', 'image');
    await expectRejected(() => postForm(EDIT, [['prompt', 'p'], ['mask', fx.mask64, 'm.png']]), 400, 'invalid_request', 'image');
    await expectRejected(() => postJson(EDIT, { prompt: 'p' }), 400, 'invalid_request', 'image');
  });

  it('images on the generation endpoint → 400', async () => {
    await expectRejected(() => postForm(GEN, [['prompt', 'p'], ['image', fx.png64, 'a.png']]), 400, 'invalid_request', 'image');
  });

  it('an edit on a generation-only model → 400 model_capability_mismatch', async () => {
    await expectRejected(
      () => postForm(EDIT, [['prompt', 'p'], ['model', 'gen-only'], ['image', fx.png64, 'a.png']]),
      400,
      'model_capability_mismatch',
      'model',
    );
    await expectRejected(
      () => postJson(EDIT, { prompt: 'p', model: 'gen-only', images: [{ image_url: dataUrl(fx.png64) }] }),
      400,
      'model_capability_mismatch',
      'model',
    );
  });

  it('a file part over limits.maxInputImageBytes → 413', async () => {
    const big = Buffer.concat([fx.png64, randomBytes(MAX_FILE_BYTES + KiB - fx.png64.length)]);
    expect(big.length).toBeLessThan(MAX_BODY_BYTES);
    await expectRejected(() => postForm(EDIT, [['prompt', 'p'], ['image', big, 'big.png', 'image/png']]), 413, 'payload_too_large', 'image');
  });

  it('a multipart body over server.maxBodyBytes → 413, declared or streamed, with no temp file left', async () => {
    const parts: Part[] = [['prompt', 'p']];
    for (let i = 0; i < 3; i += 1) parts.push(['image[]', randomBytes(MAX_FILE_BYTES - KiB), `${i}.png`, 'image/png']);
    const { body, contentType } = await encodeForm(parts);
    expect(body.length).toBeGreaterThan(MAX_BODY_BYTES);
    await expectRejected(() => send(EDIT, { headers: { 'content-type': contentType }, body }), 413, 'payload_too_large');
    const chunks: Buffer[] = [];
    for (let i = 0; i < body.length; i += 4 * KiB) chunks.push(body.subarray(i, i + 4 * KiB));
    await expectRejected(() => send(EDIT, { headers: { 'content-type': contentType }, chunks }), 413, 'payload_too_large');
  });

  describe('malformed multipart → 400 invalid_multipart, never 500', () => {
    const valid = async () => encodeForm([['prompt', 'p'], ['image', fx.png64, 'a.png', 'image/png']]);

    it('no boundary in the Content-Type', async () => {
      const { body } = await valid();
      await expectRejected(() => send(EDIT, { headers: { 'content-type': 'multipart/form-data' }, body }), 400, 'invalid_multipart');
    });

    it('a boundary that the body does not use', async () => {
      const { body } = await valid();
      await expectRejected(
        () => send(EDIT, { headers: { 'content-type': 'multipart/form-data; boundary=not-the-one-used' }, body }),
        400,
        'invalid_multipart',
      );
    });

    it('a garbage body', async () => {
      await expectRejected(
        () => send(EDIT, { headers: { 'content-type': 'multipart/form-data; boundary=XyZ' }, body: randomBytes(2 * KiB) }),
        400,
        'invalid_multipart',
      );
    });

    it('a body missing its closing boundary', async () => {
      const { body, contentType } = await valid();
      const text = body.toString('latin1');
      const cut = text.lastIndexOf('\r\n--');
      expect(cut).toBeGreaterThan(0);
      await expectRejected(
        () => send(EDIT, { headers: { 'content-type': contentType }, body: body.subarray(0, cut) }),
        400,
        'invalid_multipart',
      );
      // Cut in the middle of the file part.
      await expectRejected(
        () => send(EDIT, { headers: { 'content-type': contentType }, body: body.subarray(0, Math.floor(body.length * 0.7)) }),
        400,
        'invalid_multipart',
      );
    });

    it('an empty body', async () => {
      await expectRejected(
        () => send(EDIT, { headers: { 'content-type': 'multipart/form-data; boundary=XyZ' }, body: '' }),
        400,
        'invalid_multipart',
      );
    });
  });
});

describe('JSON edits', () => {
  it('images[].image_url data URLs with mask.image_url → 200 with an image', async () => {
    await expectImages(
      await postJson(EDIT, {
        prompt: 'paint the hole',
        images: [{ image_url: dataUrl(fx.png64) }, { image_url: dataUrl(fx.jpeg64, 'image/jpeg') }],
        mask: { image_url: dataUrl(fx.mask64) },
        size: '64x64',
      }),
      1,
      '64x64',
    );
  });

  it('the JSON mask follows the same rules as the multipart one', async () => {
    await expectRejected(
      () => postJson(EDIT, { prompt: 'p', images: [{ image_url: dataUrl(fx.png64) }], mask: { image_url: dataUrl(fx.mask32) } }),
      400,
      'mask_size_mismatch',
      'mask',
    );
    await expectRejected(
      () => postJson(EDIT, { prompt: 'p', images: [{ image_url: dataUrl(fx.png64) }], mask: { image_url: dataUrl(fx.maskJpeg64, 'image/jpeg') } }),
      400,
      'invalid_mask',
      'mask',
    );
  });

  it('an https image_url → 400 (remote URLs are not fetched)', async () => {
    await expectRejected(
      () => postJson(EDIT, { prompt: 'p', images: [{ image_url: 'https://example.com/cat.png' }] }),
      400,
      'invalid_image',
      'images[0]',
    );
  });

  it('file_id → 400 unsupported_parameter', async () => {
    await expectRejected(() => postJson(EDIT, { prompt: 'p', images: [{ file_id: 'file-abc' }] }), 400, 'unsupported_parameter', 'images[0]');
  });

  it('invalid base64, a non-image data URL or a non-base64 data URL → 400 invalid_image', async () => {
    await expectRejected(() => postJson(EDIT, { prompt: 'p', images: [{ image_url: 'data:image/png;base64,!!!!' }] }), 400, 'invalid_image', 'images[0]');
    await expectRejected(
      () => postJson(EDIT, { prompt: 'p', images: [{ image_url: dataUrl(Buffer.from('just some text, not a picture'), 'image/png') }] }),
      400,
      'invalid_image',
      'images[0]',
    );
    await expectRejected(() => postJson(EDIT, { prompt: 'p', images: [{ image_url: 'data:image/png,rawbytes' }] }), 400, 'invalid_image', 'images[0]');
    await expectRejected(
      () => postJson(EDIT, { prompt: 'p', images: [{ image_url: dataUrl(fx.png64) }, { image_url: dataUrl(fx.gif, 'image/gif') }] }),
      400,
      'invalid_image',
      'images[1]',
    );
  });

  it('a malformed image entry → 400', async () => {
    await expectRejected(() => postJson(EDIT, { prompt: 'p', images: [{ url: dataUrl(fx.png64) }] }), 400, 'invalid_request', 'images[0]');
    await expectRejected(() => postJson(EDIT, { prompt: 'p', images: [null] }), 400, 'invalid_request', 'images[0]');
  });

  it('a data URL over limits.maxInputImageBytes → 413', async () => {
    const big = Buffer.concat([fx.png64, randomBytes(MAX_FILE_BYTES + KiB - fx.png64.length)]);
    await expectRejected(() => postJson(EDIT, { prompt: 'p', images: [{ image_url: dataUrl(big) }] }), 413, 'payload_too_large', 'images[0]');
  });

  it('17 images → 400 too_many_images', async () => {
    const images = Array.from({ length: 17 }, () => ({ image_url: dataUrl(fx.png8) }));
    await expectRejected(() => postJson(EDIT, { prompt: 'p', images }), 400, 'too_many_images', 'images');
  });

  it('a bad field after valid images still leaves no temp file', async () => {
    await expectRejected(
      () => postJson(EDIT, { prompt: 'p', images: [{ image_url: dataUrl(fx.png64) }], size: '1x1' }),
      400,
      'invalid_size',
      'size',
    );
    await expectRejected(
      () => postJson(EDIT, { prompt: 'x'.repeat(MAX_PROMPT_CHARS + 1), images: [{ image_url: dataUrl(fx.png64) }] }),
      400,
      'prompt_too_long',
      'prompt',
    );
  });
});

describe('truncated bodies on a raw socket', () => {
  /** Sends the head and part of the body, then closes the connection; returns whatever came back. */
  function truncatedUpload(head: string, partialBody: Buffer): Promise<string> {
    const { port } = new URL(t.url);
    return new Promise<string>((resolve) => {
      const socket = net.connect(Number(port), '127.0.0.1', () => {
        socket.write(head);
        socket.write(partialBody, () => socket.end());
      });
      const received: Buffer[] = [];
      socket.on('data', (c: Buffer) => received.push(c));
      socket.on('error', () => undefined);
      socket.on('close', () => resolve(Buffer.concat(received).toString('latin1')));
    });
  }

  /** Descriptors of this process (the daemon runs in it) still open on files under the temp dir. */
  async function openTempFiles(): Promise<string[]> {
    const open: string[] = [];
    for (const fd of await readdir('/proc/self/fd').catch(() => [] as string[])) {
      const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
      if (target.startsWith(t.daemon.blobs.tmpDir)) open.push(target);
    }
    return open;
  }

  async function expectCleanAfterTruncation(before: Trace): Promise<void> {
    await sleep(300);
    await expectNoTrace(before);
    expect(await openTempFiles(), 'a half-written upload is still open').toEqual([]);
    const health = await fetch(`${t.url}/healthz`);
    expect(health.status).toBe(200);
    await expectImages(await postJson(GEN, { prompt: 'still alive', size: '64x64' }), 1);
  }

  it('a multipart upload cut off mid-file: the daemon stays up and leaves no temp file', async () => {
    const { body, contentType } = await encodeForm([['prompt', 'p'], ['image', fx.noisyPng, 'a.png', 'image/png']]);
    const before = await trace();
    const head =
      `POST ${EDIT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: ${contentType}\r\n` +
      `Content-Length: ${body.length + 10_000}\r\n\r\n`;
    await truncatedUpload(head, body.subarray(0, Math.floor(body.length * 0.8)));
    await expectCleanAfterTruncation(before);
  });

  it('a multipart upload cut off after the whole file but before the closing boundary', async () => {
    const { body, contentType } = await encodeForm([['prompt', 'p'], ['image', fx.png64, 'a.png', 'image/png'], ['n', '1']]);
    const before = await trace();
    const head =
      `POST ${EDIT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: ${contentType}\r\n` + `Content-Length: ${body.length}\r\n\r\n`;
    await truncatedUpload(head, body.subarray(0, body.length - 20));
    await expectCleanAfterTruncation(before);
  });

  it('a JSON body cut off: the daemon stays up and leaves nothing', async () => {
    const json = Buffer.from(JSON.stringify({ prompt: 'p', images: [{ image_url: dataUrl(fx.png64) }] }));
    const before = await trace();
    const head =
      `POST ${EDIT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n` + `Content-Length: ${json.length + 500}\r\n\r\n`;
    await truncatedUpload(head, json);
    await expectCleanAfterTruncation(before);
  });
});

describe('the daemon after all of the above', () => {
  it('still answers /healthz and logged no unhandled error', async () => {
    const res = await fetch(`${t.url}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ok' });
    const unhandled = t.logs.filter((l) => l.level === 'error');
    expect(unhandled).toEqual([]);
    const statuses = t.logs.filter((l) => l.message === 'request').map((l) => l.status as number);
    expect(statuses.length).toBeGreaterThan(50);
    expect(statuses.filter((s) => s >= 500)).toEqual([]);
  });
});
