import { createHash } from 'node:crypto';
import { getEventListeners } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { BackendError } from '../../src/backends/errors.js';
import {
  blendWithMask,
  createReferenceBackend,
  renderPattern,
  renderPatternRaw,
  sleepWithSignal,
} from '../../src/backends/reference.js';
import type { BackendCallOptions, ImageBackend, InputImage } from '../../src/backends/types.js';
import { referenceBackendSchema, type ReferenceBackendConfig } from '../../src/config/schema.js';
import { backendCallOptions } from '../helpers/backend-call.js';

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pixeld-reference-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

afterEach(() => {
  vi.useRealTimers();
});

function backendConfig(overrides: Partial<ReferenceBackendConfig> = {}): ReferenceBackendConfig {
  return { ...referenceBackendSchema.parse({ id: 'ref', type: 'reference' }), ...overrides };
}

function callOptions(overrides: Partial<BackendCallOptions> = {}): BackendCallOptions {
  return backendCallOptions({ model: 'reference-image-1', prompt: 'a lighthouse at dusk', size: '64x64', ...overrides });
}

let fileCounter = 0;

/** Writes PNG bytes to a file the way the HTTP layer would hand an upload to a backend. */
async function inputImage(png: Buffer): Promise<InputImage> {
  const meta = await sharp(png).metadata();
  fileCounter += 1;
  const path = join(dir, `input-${fileCounter}.png`);
  await writeFile(path, png);
  return {
    path,
    mediaType: 'image/png',
    width: meta.width,
    height: meta.height,
    sha256: createHash('sha256').update(png).digest('hex'),
  };
}

/** An opaque picture with a different colour in every pixel, so copied pixels can be told from others. */
async function texturedPng(width: number, height: number): Promise<Buffer> {
  const data = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      data[i] = (x * 7 + y * 3) % 256;
      data[i + 1] = (x * 5 + y * 11) % 256;
      data[i + 2] = (x * y + 40) % 256;
    }
  }
  return sharp(data, { raw: { width, height, channels: 3 } }).png().toBuffer();
}

/** OpenAI mask: alpha 0 (edit) where x < editBelowX, alpha 255 (keep) elsewhere. */
async function leftEditMask(width: number, height: number, editBelowX: number): Promise<Buffer> {
  const data = Buffer.alloc(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 4;
      data[i + 3] = x < editBelowX ? 0 : 255;
    }
  }
  return sharp(data, { raw: { width, height, channels: 4 } }).png().toBuffer();
}

async function solidPng(r: number, g: number, b: number): Promise<Buffer> {
  return sharp({ create: { width: 32, height: 32, channels: 3, background: { r, g, b } } }).png().toBuffer();
}

async function rgba(png: Uint8Array | string): Promise<{ data: Buffer; width: number; height: number }> {
  const { data, info } = await sharp(png).ensureAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

function pixel(img: { data: Buffer; width: number }, x: number, y: number): number[] {
  const i = (y * img.width + x) * 4;
  return [...img.data.subarray(i, i + 4)];
}

async function generateOne(backend: ImageBackend, overrides: Partial<BackendCallOptions>): Promise<Uint8Array> {
  const result = await backend.generate(callOptions(overrides));
  expect(result.images).toHaveLength(1);
  return result.images[0] as Uint8Array;
}

describe('reference backend: generation', () => {
  const backend = createReferenceBackend(backendConfig());

  it('renders byte-identical PNGs for the same prompt, seed and size', async () => {
    const a = await generateOne(backend, { seed: 7 });
    const b = await generateOne(backend, { seed: 7 });
    expect(Buffer.from(a).subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    expect(Buffer.compare(a, b)).toBe(0);
  });

  it('renders different pictures for another seed or another prompt', async () => {
    const base = await generateOne(backend, { seed: 7 });
    const otherSeed = await generateOne(backend, { seed: 8 });
    const otherPrompt = await generateOne(backend, { seed: 7, prompt: 'a lighthouse at dawn' });
    const [basePx, seedPx, promptPx] = await Promise.all([rgba(base), rgba(otherSeed), rgba(otherPrompt)]);
    expect(basePx.data.equals(seedPx.data)).toBe(false);
    expect(basePx.data.equals(promptPx.data)).toBe(false);
  });

  it('returns exactly n images of the requested size, image i drawn with seed + i', async () => {
    const result = await backend.generate(callOptions({ n: 3, size: '96x48', seed: 100 }));
    expect(result.images).toHaveLength(3);
    for (const [i, image] of result.images.entries()) {
      const meta = await sharp(image).metadata();
      expect(meta.format).toBe('png');
      expect([meta.width, meta.height]).toEqual([96, 48]);
      const alone = await generateOne(backend, { size: '96x48', seed: 100 + i });
      expect(Buffer.compare(image, alone)).toBe(0);
    }
    const hashes = new Set(result.images.map((img) => createHash('sha256').update(img).digest('hex')));
    expect(hashes.size).toBe(3);
    expect(result.response.modelId).toBe('reference-image-1');
  });

  it('renders opaque RGB unless a transparent background is asked for', async () => {
    for (const background of ['auto', 'opaque'] as const) {
      const meta = await sharp(await generateOne(backend, { background })).metadata();
      expect(meta.channels).toBe(3);
      expect(meta.hasAlpha).toBe(false);
    }
  });

  it('renders RGBA with see-through background and visible shapes when background is transparent', async () => {
    const png = await generateOne(backend, { background: 'transparent', size: '128x128' });
    const meta = await sharp(png).metadata();
    expect(meta.channels).toBe(4);
    const { data } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
    const alphas = new Set<number>();
    let transparentPixels = 0;
    for (let i = 3; i < data.length; i += 4) {
      alphas.add(data[i] as number);
      if (data[i] === 0) transparentPixels += 1;
    }
    expect(transparentPixels).toBeGreaterThan(0);
    expect(transparentPixels).toBeLessThan(128 * 128);
    expect([...alphas].some((a) => a > 128)).toBe(true);
  });

  it('renderPattern and renderPatternRaw draw the same picture', async () => {
    const png = await renderPattern('p', 3, 40, 30, false);
    const raw = await renderPatternRaw('p', 3, 40, 30, false);
    expect([raw.width, raw.height]).toEqual([40, 30]);
    expect((await rgba(png)).data.equals(raw.data)).toBe(true);
  });
});

describe('reference backend: edits', () => {
  const backend = createReferenceBackend(backendConfig());

  it('keeps the original where the mask alpha is 255 and paints the pattern where it is 0', async () => {
    const original = await inputImage(await texturedPng(64, 64));
    const mask = await inputImage(await leftEditMask(64, 64, 32));
    const out = await generateOne(backend, { images: [original], mask, seed: 5 });

    const meta = await sharp(out).metadata();
    expect([meta.width, meta.height, meta.channels]).toEqual([64, 64, 3]);
    const got = await rgba(out);
    const orig = await rgba(original.path);
    const pattern = await renderPatternRaw('a lighthouse at dusk', 5, 64, 64, false);

    let leftDiffering = 0;
    for (let y = 0; y < 64; y++) {
      for (let x = 0; x < 64; x++) {
        if (x >= 32) {
          expect(pixel(got, x, y)).toEqual(pixel(orig, x, y));
        } else {
          expect(pixel(got, x, y)).toEqual(pixel(pattern, x, y));
          if (pixel(got, x, y).join() !== pixel(orig, x, y).join()) leftDiffering += 1;
        }
      }
    }
    expect(leftDiffering).toBeGreaterThan(32 * 64 * 0.9);
  });

  it('blends intermediate mask alpha between original and pattern', () => {
    const original = Uint8Array.from([200, 100, 0, 255]);
    const pattern = Uint8Array.from([0, 100, 200, 255]);
    expect([...blendWithMask(original, pattern, Uint8Array.from([255]))]).toEqual([200, 100, 0, 255]);
    expect([...blendWithMask(original, pattern, Uint8Array.from([0]))]).toEqual([0, 100, 200, 255]);
    // 51/255 = 20 % original.
    expect([...blendWithMask(original, pattern, Uint8Array.from([51]))]).toEqual([40, 100, 160, 255]);
  });

  it('does not bleed the colour of see-through pixels into a blend', () => {
    const original = Uint8Array.from([255, 0, 0, 255]);
    const seeThrough = Uint8Array.from([0, 0, 255, 0]);
    expect([...blendWithMask(original, seeThrough, Uint8Array.from([128]))]).toEqual([255, 0, 0, 128]);
  });

  it('blends the whole image half and half with the pattern when there is no mask', async () => {
    const original = await inputImage(await texturedPng(48, 48));
    const out = await generateOne(backend, { images: [original], size: '48x48', seed: 9 });
    const got = await rgba(out);
    const orig = await rgba(original.path);
    const pattern = await renderPatternRaw('a lighthouse at dusk', 9, 48, 48, false);
    for (let i = 0; i < got.data.length; i++) {
      const expected = ((orig.data[i] as number) + (pattern.data[i] as number)) / 2;
      expect(Math.abs((got.data[i] as number) - expected)).toBeLessThanOrEqual(0.5);
    }
    expect(got.data.equals(orig.data)).toBe(false);
  });

  it('gives each edited image its own seed while keeping the unmasked part', async () => {
    const original = await inputImage(await texturedPng(32, 32));
    const mask = await inputImage(await leftEditMask(32, 32, 16));
    const result = await backend.generate(callOptions({ images: [original], mask, n: 2, size: '32x32' }));
    expect(result.images).toHaveLength(2);
    const [a, b] = await Promise.all(result.images.map((img) => rgba(img)));
    const orig = await rgba(original.path);
    expect(a!.data.equals(b!.data)).toBe(false);
    for (const img of [a!, b!]) {
      for (let y = 0; y < 32; y++) expect(pixel(img, 20, y)).toEqual(pixel(orig, 20, y));
    }
  });

  it('scales image and mask the same way (cover) to the requested size', async () => {
    // 128x64 covered into 64x64 needs no resampling: it is the centre crop x = 32..95.
    const original = await inputImage(await texturedPng(128, 64));
    const mask = await inputImage(await leftEditMask(128, 64, 64));
    const out = await generateOne(backend, { images: [original], mask, size: '64x64', seed: 1 });
    const got = await rgba(out);
    expect([got.width, got.height]).toEqual([64, 64]);
    const orig = await rgba(original.path);
    const pattern = await renderPatternRaw('a lighthouse at dusk', 1, 64, 64, false);
    for (let y = 0; y < 64; y += 3) {
      for (let x = 0; x < 64; x += 3) {
        expect(pixel(got, x, y)).toEqual(x < 32 ? pixel(pattern, x, y) : pixel(orig, x + 32, y));
      }
    }
  });

  it('lets the other input images tint the pattern', async () => {
    const original = await inputImage(await texturedPng(32, 32));
    const mask = await inputImage(await leftEditMask(32, 32, 16));
    const red = await inputImage(await solidPng(255, 0, 0));
    const blue = await inputImage(await solidPng(0, 0, 255));
    const plain = await rgba(await generateOne(backend, { images: [original], mask, size: '32x32' }));
    const withRed = await rgba(await generateOne(backend, { images: [original, red], mask, size: '32x32' }));
    const withBlue = await rgba(await generateOne(backend, { images: [original, blue], mask, size: '32x32' }));
    expect(withRed.data.equals(plain.data)).toBe(false);
    expect(withRed.data.equals(withBlue.data)).toBe(false);

    let redMinusBlue = 0;
    for (let y = 0; y < 32; y++) {
      for (let x = 0; x < 16; x++) {
        const r = pixel(withRed, x, y);
        const b = pixel(withBlue, x, y);
        redMinusBlue += (r[0]! - r[2]!) - (b[0]! - b[2]!);
      }
      // The kept half is untouched whatever the references are.
      expect(pixel(withRed, 24, y)).toEqual(pixel(withBlue, 24, y));
    }
    expect(redMinusBlue).toBeGreaterThan(0);
  });

  it('keeps an alpha channel and see-through pattern in the edited part for a transparent background', async () => {
    const original = await inputImage(await texturedPng(64, 64));
    const mask = await inputImage(await leftEditMask(64, 64, 32));
    const out = await generateOne(backend, { images: [original], mask, background: 'transparent' });
    expect((await sharp(out).metadata()).channels).toBe(4);
    const got = await rgba(out);
    let seeThroughLeft = 0;
    for (let y = 0; y < 64; y++) {
      for (let x = 0; x < 64; x++) {
        const alpha = pixel(got, x, y)[3];
        if (x >= 32) expect(alpha).toBe(255);
        else if (alpha === 0) seeThroughLeft += 1;
      }
    }
    expect(seeThroughLeft).toBeGreaterThan(0);
  });

  it('warns and keeps the image when the mask has no alpha channel', async () => {
    const original = await inputImage(await texturedPng(32, 32));
    const mask = await inputImage(await solidPng(0, 0, 0));
    const result = await backend.generate(callOptions({ images: [original], mask: { ...mask, width: 32, height: 32 }, size: '32x32' }));
    expect(result.warnings).toEqual([expect.objectContaining({ type: 'other', feature: 'mask' })]);
    expect((await rgba(result.images[0]!)).data.equals((await rgba(original.path)).data)).toBe(true);
  });

  it('rejects an undecodable input image without leaking its path', async () => {
    const path = join(dir, 'not-an-image.png');
    await writeFile(path, 'definitely not a png');
    const broken: InputImage = { path, mediaType: 'image/png', width: 32, height: 32, sha256: '0'.repeat(64) };
    const error = await backend.generate(callOptions({ images: [broken] })).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BackendError);
    expect((error as BackendError).kind).toBe('rejected');
    expect((error as BackendError).message).not.toContain(dir);
  });
});

describe('reference backend: latency and cancellation', () => {
  it('waits latencyMsPerImage × n through the injected sleep, with the call signal', async () => {
    let release: () => void = () => undefined;
    const sleep = vi.fn((_ms: number, _signal: AbortSignal) => new Promise<void>((resolve) => (release = resolve)));
    const backend = createReferenceBackend(backendConfig({ latencyMsPerImage: 250 }), { sleep, now: () => 1_000 });
    const signal = new AbortController().signal;
    let settled = false;
    const pending = backend.generate(callOptions({ n: 3, signal })).finally(() => (settled = true));

    await vi.waitFor(() => expect(sleep).toHaveBeenCalledTimes(1));
    expect(sleep).toHaveBeenCalledWith(750, signal);
    await new Promise((r) => setTimeout(r, 20));
    expect(settled).toBe(false);
    release();
    expect((await pending).images).toHaveLength(3);
  });

  it('counts the rendering time towards the latency, and does not sleep when rendering took longer', async () => {
    const sleep = vi.fn((_ms: number, _signal: AbortSignal) => Promise.resolve());
    // The clock is read when the call starts, after rendering, and for the response timestamp.
    const clock = (readings: number[]) => () => readings.shift() ?? 0;
    const timed = createReferenceBackend(backendConfig({ latencyMsPerImage: 100 }), { sleep, now: clock([5_000, 5_030, 5_100]) });
    await timed.generate(callOptions({ n: 2 }));
    expect(sleep).toHaveBeenCalledTimes(1);
    expect(sleep.mock.calls[0]![0]).toBe(170);

    const slow = createReferenceBackend(backendConfig({ latencyMsPerImage: 100 }), { sleep, now: clock([5_000, 5_100, 5_100]) });
    await slow.generate(callOptions({ n: 1 }));
    expect(sleep).toHaveBeenCalledTimes(1);
  });

  it('rejects with the signal reason soon after an abort during the simulated latency', async () => {
    const backend = createReferenceBackend(backendConfig({ latencyMsPerImage: 10_000 }));
    const controller = new AbortController();
    const reason = new Error('cancelled by test');
    const started = Date.now();
    const pending = backend.generate(callOptions({ n: 2, signal: controller.signal }));
    setTimeout(() => controller.abort(reason), 50);
    await expect(pending).rejects.toBe(reason);
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('rejects at once with the reason when the signal is already aborted', async () => {
    const backend = createReferenceBackend(backendConfig());
    const reason = new Error('deadline passed');
    await expect(backend.generate(callOptions({ signal: AbortSignal.abort(reason) }))).rejects.toBe(reason);
  });

  it('sleepWithSignal resolves after the delay and removes its abort listener', async () => {
    vi.useFakeTimers();
    const controller = new AbortController();
    let done = false;
    const sleeping = sleepWithSignal(1_000, controller.signal).then(() => (done = true));
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(999);
    expect(done).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await sleeping;
    expect(done).toBe(true);
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
  });

  it('sleepWithSignal rejects with the reason on abort and clears its timer', async () => {
    vi.useFakeTimers();
    const controller = new AbortController();
    const sleeping = sleepWithSignal(60_000, controller.signal);
    expect(vi.getTimerCount()).toBe(1);
    const reason = new Error('stop');
    controller.abort(reason);
    await expect(sleeping).rejects.toBe(reason);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe('reference backend: contract', () => {
  it('takes id, limits and re-run policy from its config and reports healthy', async () => {
    const backend = createReferenceBackend(backendConfig({ id: 'demo', maxImagesPerCall: 2, rerunInterruptedJobs: false }));
    expect(backend.id).toBe('demo');
    expect(backend.type).toBe('reference');
    expect(backend.maxImagesPerCall).toBe(2);
    expect(backend.rerunInterruptedJobs).toBe(false);
    await expect(backend.checkHealth(new AbortController().signal)).resolves.toBeUndefined();
  });

  it('warns about each option the renderer ignores, and only those given', async () => {
    const backend = createReferenceBackend(backendConfig());
    const quiet = await backend.generate(callOptions());
    expect(quiet.warnings).toEqual([]);
    const noisy = await backend.generate(
      callOptions({ negativePrompt: 'blurry', numInferenceSteps: 30, guidanceScale: 7.5 }),
    );
    expect(noisy.warnings.map((w) => [w.type, w.feature])).toEqual([
      ['unsupported', 'negative_prompt'],
      ['unsupported', 'num_inference_steps'],
      ['unsupported', 'guidance_scale'],
    ]);
    for (const w of noisy.warnings) expect(w.message.length).toBeGreaterThan(0);
  });

  it('refuses more images than one call may return, and malformed sizes', async () => {
    const backend = createReferenceBackend(backendConfig({ maxImagesPerCall: 2 }));
    await expect(backend.generate(callOptions({ n: 3 }))).rejects.toMatchObject({ name: 'BackendError', kind: 'rejected' });
    await expect(backend.generate(callOptions({ size: '0x64' }))).rejects.toMatchObject({ name: 'BackendError', kind: 'rejected' });
  });
});
