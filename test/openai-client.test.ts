import OpenAI, { NotFoundError, toFile } from 'openai';
import sharp, { type Metadata } from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestDaemon, type TestDaemon } from './helpers/daemon.js';

/**
 * The official `openai` SDK, used exactly as a customer would, with only baseURL and a dummy key changed.
 * Whatever the SDK sends (multipart with `image[]`, numbers as strings, its own headers) must work.
 */

const MODEL = 'reference-image-1';
const SIZE = 256;

let daemon: TestDaemon;
let client: OpenAI;

beforeAll(async () => {
  daemon = await startTestDaemon({
    config: { backends: [{ id: 'reference', type: 'reference', concurrency: 2, latencyMsPerImage: 0 }] },
  });
  // No retries: a 5xx must fail the test at once instead of re-running the job twice more.
  client = new OpenAI({ baseURL: `${daemon.url}/v1`, apiKey: 'sk-test-dummy', maxRetries: 0, timeout: 20_000 });
});

afterAll(async () => {
  await daemon?.close();
});

/** PNG magic, IHDR and all: sharp decodes every pixel, so a truncated file fails here. */
async function decode(b64: string | undefined): Promise<{ bytes: Buffer; meta: Metadata; raw: Buffer; channels: number }> {
  expect(typeof b64).toBe('string');
  const bytes = Buffer.from(b64!, 'base64');
  const meta = await sharp(bytes).metadata();
  const { data, info } = await sharp(bytes).ensureAlpha().raw().toBuffer({ resolveWithObject: true });
  return { bytes, meta, raw: data, channels: info.channels };
}

/** A deterministic, busy RGB picture (no alpha), so a kept region is easy to tell from a redrawn one. */
async function checkerPng(seed: number): Promise<Buffer> {
  const raw = Buffer.alloc(SIZE * SIZE * 3);
  for (let y = 0; y < SIZE; y++) {
    for (let x = 0; x < SIZE; x++) {
      const i = (y * SIZE + x) * 3;
      raw[i] = (x * 7 + seed * 31) & 0xff;
      raw[i + 1] = (y * 5 + seed * 17) & 0xff;
      raw[i + 2] = ((x ^ y) * 3 + seed) & 0xff;
    }
  }
  return sharp(raw, { raw: { width: SIZE, height: SIZE, channels: 3 } }).png().toBuffer();
}

/** OpenAI mask: alpha 255 (keep) on the left half, alpha 0 (edit here) on the right half. */
async function leftKeepMask(): Promise<Buffer> {
  const raw = Buffer.alloc(SIZE * SIZE * 4);
  for (let y = 0; y < SIZE; y++) {
    for (let x = 0; x < SIZE; x++) {
      const i = (y * SIZE + x) * 4;
      raw[i] = 0;
      raw[i + 1] = 0;
      raw[i + 2] = 0;
      raw[i + 3] = x < SIZE / 2 ? 255 : 0;
    }
  }
  return sharp(raw, { raw: { width: SIZE, height: SIZE, channels: 4 } }).png().toBuffer();
}

describe('the official openai SDK against pixeld', () => {
  it('images.generate with n=2 returns two 256x256 PNGs', async () => {
    const response = await client.images.generate({ model: MODEL, prompt: 'a lighthouse at dusk', size: '256x256', n: 2 });
    expect(response.data).toHaveLength(2);
    expect(response.size).toBe('256x256');
    expect(response.output_format).toBe('png');
    const images = [];
    for (const item of response.data ?? []) {
      const image = await decode(item.b64_json);
      expect(image.meta.format).toBe('png');
      expect([image.meta.width, image.meta.height]).toEqual([SIZE, SIZE]);
      images.push(image);
    }
    // Each image has its own seed: two copies of one picture would be a bug.
    expect(images[0]!.raw.equals(images[1]!.raw)).toBe(false);
  });

  it('images.edit with two images (image[]) and a real alpha mask keeps the first image where alpha = 255', async () => {
    const first = await checkerPng(1);
    const second = await checkerPng(2);
    const mask = await leftKeepMask();
    const response = await client.images.edit({
      model: MODEL,
      prompt: 'paint a sunset on the right half',
      image: [
        await toFile(first, 'first.png', { type: 'image/png' }),
        await toFile(second, 'second.png', { type: 'image/png' }),
      ],
      mask: await toFile(mask, 'mask.png', { type: 'image/png' }),
      size: '256x256',
    });
    expect(response.data).toHaveLength(1);
    const out = await decode(response.data![0]!.b64_json);
    expect(out.meta.format).toBe('png');
    expect([out.meta.width, out.meta.height]).toEqual([SIZE, SIZE]);

    const original = (await sharp(first).ensureAlpha().raw().toBuffer({ resolveWithObject: true })).data;
    let keptDiffer = 0;
    let editedDiffer = 0;
    for (let y = 0; y < SIZE; y++) {
      for (let x = 0; x < SIZE; x++) {
        const i = (y * SIZE + x) * 4;
        const same =
          out.raw[i] === original[i] && out.raw[i + 1] === original[i + 1] && out.raw[i + 2] === original[i + 2] && out.raw[i + 3] === original[i + 3];
        if (x < SIZE / 2) {
          if (!same) keptDiffer += 1;
        } else if (!same) {
          editedDiffer += 1;
        }
      }
    }
    // Every kept pixel is exactly the first input's.
    expect(keptDiffer).toBe(0);
    // The edited half was redrawn (a few pixels may match by chance, not most of them).
    expect(editedDiffer).toBeGreaterThan((SIZE * SIZE) / 2 * 0.9);
  });

  it('images.edit passes every image of the array on: a second image changes the result', async () => {
    const first = await checkerPng(1);
    const mask = await leftKeepMask();
    // `seed` is a pixeld extension the SDK does not know; it sends unknown keys as form fields all the same.
    const edit = async (images: Buffer[]) => {
      const params = {
        model: MODEL,
        prompt: 'paint a sunset on the right half',
        image: await Promise.all(images.map((bytes, i) => toFile(bytes, `in-${i}.png`, { type: 'image/png' }))),
        mask: await toFile(mask, 'mask.png', { type: 'image/png' }),
        size: '256x256' as const,
        seed: 7,
      };
      const response = await client.images.edit(params as OpenAI.Images.ImageEditParamsNonStreaming);
      return (await decode(response.data?.[0]?.b64_json)).raw;
    };
    const alone = await edit([first]);
    const again = await edit([first]);
    const withSecond = await edit([first, await checkerPng(2)]);
    // Same inputs and seed, same picture; a second input image (tinting the pattern) gives a different one.
    expect(again.equals(alone)).toBe(true);
    expect(withSecond.equals(alone)).toBe(false);
  });

  it('an unknown model surfaces as NotFoundError with code model_not_found', async () => {
    const error = await client.images
      .generate({ model: 'no-such-model', prompt: 'anything', size: '256x256' })
      .then(() => undefined, (err: unknown) => err);
    expect(error).toBeInstanceOf(NotFoundError);
    const notFound = error as NotFoundError;
    expect(notFound.status).toBe(404);
    expect(notFound.code).toBe('model_not_found');
    expect(notFound.type).toBe('invalid_request_error');
    expect(notFound.message).toMatch(/no-such-model/);
    // The SDK takes the request id from the header the daemon sets on every response.
    expect(notFound.requestID).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it("response_format: 'url' returns a link that serves the PNG", async () => {
    const response = await client.images.generate({
      model: MODEL,
      prompt: 'a harbour at night',
      size: '256x256',
      response_format: 'url',
    });
    expect(response.data).toHaveLength(1);
    const url = response.data![0]!.url;
    expect(url).toMatch(new RegExp(`^${daemon.url}/v1/files/`));
    expect(response.data![0]!.b64_json).toBeUndefined();
    const res = await fetch(url!);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/png');
    const bytes = Buffer.from(await res.arrayBuffer());
    const meta = await sharp(bytes).metadata();
    expect(meta.format).toBe('png');
    expect([meta.width, meta.height]).toEqual([SIZE, SIZE]);
  });

  it("output_format: 'jpeg' returns JPEG bytes", async () => {
    const response = await client.withOptions({ maxRetries: 0 }).images.generate({
      model: MODEL,
      prompt: 'three gulls',
      size: '256x256',
      output_format: 'jpeg',
      output_compression: 80,
    });
    expect(response.output_format).toBe('jpeg');
    const image = await decode(response.data?.[0]?.b64_json);
    expect([...image.bytes.subarray(0, 3)]).toEqual([0xff, 0xd8, 0xff]);
    expect(image.meta.format).toBe('jpeg');
    expect([image.meta.width, image.meta.height]).toEqual([SIZE, SIZE]);
  });

  it('models.list lists the catalogue, and the fields a router prices by come through', async () => {
    const models = [];
    for await (const model of client.models.list()) models.push(model);
    expect(models.map((m) => m.id)).toEqual([MODEL]);
    expect(models[0]).toMatchObject({ object: 'model', owned_by: 'pixeld', created: expect.any(Number) });
    expect(models[0]).toMatchObject({ max_n: 4, pricing: { image: '0', unit: 'wei', image_0g: '0.0' }, rate_limits: expect.any(Object) });
  });
});
