import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { resizeMask, toA1111Mask, toChannelMask, toWhiteInpaintMask } from '../../src/images/masks.js';

const ALPHAS = [0, 1, 64, 127, 128, 200, 254, 255];

/** A 4x2 OpenAI-style mask: reddish pixels whose alpha walks through ALPHAS. */
async function rgbaMask(): Promise<Buffer> {
  const raw = Buffer.alloc(ALPHAS.length * 4);
  ALPHAS.forEach((alpha, i) => {
    raw[i * 4] = 200;
    raw[i * 4 + 1] = 30;
    raw[i * 4 + 2] = 90;
    raw[i * 4 + 3] = alpha;
  });
  return sharp(raw, { raw: { width: 4, height: 2, channels: 4 } }).png().toBuffer();
}

async function grayPixels(png: Buffer): Promise<number[]> {
  const meta = await sharp(png).metadata();
  expect(meta.format).toBe('png');
  expect(meta.channels).toBe(1);
  expect(meta.hasAlpha).toBe(false);
  return [...(await sharp(png).extractChannel(0).raw().toBuffer())];
}

describe('toWhiteInpaintMask', () => {
  it('turns alpha into a grayscale PNG with L = 255 - alpha, white where OpenAI edits', async () => {
    const out = await toWhiteInpaintMask(await rgbaMask());
    const meta = await sharp(out).metadata();
    expect([meta.width, meta.height]).toEqual([4, 2]);
    expect(await grayPixels(out)).toEqual(ALPHAS.map((a) => 255 - a));
  });

  it('ignores the colour channels: only alpha decides', async () => {
    const raw = Buffer.from([255, 255, 255, 0, 0, 0, 0, 255]);
    const png = await sharp(raw, { raw: { width: 2, height: 1, channels: 4 } }).png().toBuffer();
    // White-but-transparent is edited (255); black-but-opaque is kept (0).
    expect(await grayPixels(await toWhiteInpaintMask(png))).toEqual([255, 0]);
  });

  it('reads gray+alpha and 16-bit masks the same way', async () => {
    const base = await rgbaMask();
    const grayAlpha = await sharp(base).toColourspace('b-w').png().toBuffer();
    expect((await sharp(grayAlpha).metadata()).channels).toBe(2);
    expect(await grayPixels(await toWhiteInpaintMask(grayAlpha))).toEqual(ALPHAS.map((a) => 255 - a));

    const deep = await sharp(base).toColourspace('rgb16').png().toBuffer();
    expect((await sharp(deep).metadata()).depth).toBe('ushort');
    const pixels = await grayPixels(await toWhiteInpaintMask(deep));
    // 8 → 16 → 8 bit round trips may move a value by one step.
    pixels.forEach((p, i) => expect(Math.abs(p - (255 - ALPHAS[i]!))).toBeLessThanOrEqual(1));
  });

  it('treats a mask without alpha as fully opaque: nothing to inpaint', async () => {
    const png = await sharp({ create: { width: 3, height: 3, channels: 3, background: '#ffffff' } }).png().toBuffer();
    expect(await grayPixels(await toWhiteInpaintMask(png))).toEqual(new Array(9).fill(0));
  });

  it('rejects bytes that are not an image', async () => {
    await expect(toWhiteInpaintMask(Buffer.from('not a png'))).rejects.toThrow();
  });
});

/**
 * How AUTOMATIC1111's create_binary_mask (modules/images.py) reads a mask, with its "Round mask" default:
 * RGBA whose alpha is not all 255 → the alpha band; anything else (L, LA, RGB, opaque RGBA) → PIL luma.
 * Then > 128 is inpaint (255).
 */
async function a1111Reads(png: Buffer): Promise<number[]> {
  const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  const meta = await sharp(png).metadata();
  const values: number[] = [];
  for (let i = 0; i < info.width * info.height; i += 1) {
    const px = data.subarray(i * info.channels, (i + 1) * info.channels);
    values.push(meta.channels === 4 ? px[3]! : info.channels >= 3 ? Math.floor((px[0]! * 299 + px[1]! * 587 + px[2]! * 114) / 1000) : px[0]!);
  }
  const rgba = meta.channels === 4;
  const useAlpha = rgba && values.some((v) => v !== 255);
  const levels = rgba && !useAlpha ? await lumaOf(png) : values;
  return levels.map((v) => (v > 128 ? 255 : 0));
}

async function lumaOf(png: Buffer): Promise<number[]> {
  const { data, info } = await sharp(png).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const out: number[] = [];
  for (let i = 0; i < info.width * info.height; i += 1) {
    out.push(Math.floor((data[i * info.channels]! * 299 + data[i * info.channels + 1]! * 587 + data[i * info.channels + 2]! * 114) / 1000));
  }
  return out;
}

function uniformMask(alpha: number, colour = 0): Promise<Buffer> {
  const raw = Buffer.alloc(4 * 4 * 4);
  for (let i = 0; i < 16; i += 1) raw.fill(colour, i * 4, i * 4 + 3).writeUInt8(alpha, i * 4 + 3);
  return sharp(raw, { raw: { width: 4, height: 4, channels: 4 } }).png().toBuffer();
}

describe('toA1111Mask', () => {
  it('sends a single-band gray PNG with white = inpaint and partial alpha mapped linearly', async () => {
    const out = await toA1111Mask(await rgbaMask());
    const meta = await sharp(out).metadata();
    expect([meta.width, meta.height, meta.channels, meta.hasAlpha]).toEqual([4, 2, 1, false]);
    expect(await grayPixels(out)).toEqual(ALPHAS.map((a) => 255 - a));
  });

  it('is read by A1111 as inpaint exactly where OpenAI says edit (alpha ≤ 126), keep elsewhere', async () => {
    const read = await a1111Reads(await toA1111Mask(await rgbaMask()));
    expect(read).toEqual(ALPHAS.map((a) => (255 - a > 128 ? 255 : 0)));
    expect(read.slice(0, 3)).toEqual([255, 255, 255]); // alpha 0, 1, 64
    expect(read.slice(-3)).toEqual([0, 0, 0]); // alpha 200, 254, 255
  });

  it('keeps its meaning for all-edit and all-keep masks, where an inverted-alpha RGBA would be misread', async () => {
    // Inverting alpha of an "edit everything" mask gives alpha all 255, which A1111 then reads from the colour.
    expect(await a1111Reads(await toA1111Mask(await uniformMask(0)))).toEqual(new Array(16).fill(255));
    expect(await a1111Reads(await toA1111Mask(await uniformMask(255, 255)))).toEqual(new Array(16).fill(0));
    // The raw OpenAI mask would be read backwards: its transparent pixels are A1111's "keep".
    expect(await a1111Reads(await rgbaMask())).toEqual(ALPHAS.map((a) => (a > 128 ? 255 : 0)));
  });
});

describe('toChannelMask', () => {
  /** ComfyUI LoadImageMask (nodes.py): colour band value / 255, alpha band 1 − alpha / 255; 1 = inpaint. */
  async function comfyReads(png: Buffer, channel: 'red' | 'green' | 'blue' | 'alpha'): Promise<number[]> {
    const { data, info } = await sharp(png).ensureAlpha().raw().toBuffer({ resolveWithObject: true });
    const band = { red: 0, green: 1, blue: 2, alpha: 3 }[channel];
    const out: number[] = [];
    for (let i = 0; i < info.width * info.height; i += 1) {
      const v = data[i * 4 + band]! / 255;
      out.push(channel === 'alpha' ? 1 - v : v);
    }
    return out;
  }

  for (const channel of ['red', 'green', 'blue', 'alpha'] as const) {
    it(`gives LoadImageMask(${channel}) 1 where alpha is 0, 0 where opaque, linear between`, async () => {
      const read = await comfyReads(await toChannelMask(await rgbaMask(), channel), channel);
      read.forEach((v, i) => expect(v).toBeCloseTo(1 - ALPHAS[i]! / 255, 6));
    });
  }

  it('drops the colour of the OpenAI mask: only alpha decides', async () => {
    const out = await toChannelMask(await uniformMask(255, 255), 'alpha');
    const { data } = await sharp(out).raw().toBuffer({ resolveWithObject: true });
    expect([...data.subarray(0, 4)]).toEqual([0, 0, 0, 255]);
    expect((await sharp(await toChannelMask(await uniformMask(0, 255), 'red')).metadata()).channels).toBe(3);
  });
});

describe('resizeMask', () => {
  it('stretches the alpha to the target size and keeps flat areas exact', async () => {
    // 8x4: left half alpha 0 (edit), right half alpha 255.
    const raw = Buffer.alloc(8 * 4 * 4);
    for (let y = 0; y < 4; y += 1) for (let x = 4; x < 8; x += 1) raw[(y * 8 + x) * 4 + 3] = 255;
    const png = await sharp(raw, { raw: { width: 8, height: 4, channels: 4 } }).png().toBuffer();
    const out = await resizeMask(png, 32, 8);
    const meta = await sharp(out).metadata();
    expect([meta.width, meta.height, meta.hasAlpha]).toEqual([32, 8, true]);
    const alpha = [...(await sharp(out).extractChannel(3).raw().toBuffer())];
    const at = (x: number, y: number) => alpha[y * 32 + x]!;
    expect(at(0, 0)).toBe(0);
    expect(at(10, 5)).toBe(0);
    expect(at(21, 2)).toBe(255);
    expect(at(31, 7)).toBe(255);
    // Composes with the converters: the white-inpaint form of the resized mask.
    const gray = await grayPixels(await toWhiteInpaintMask(out));
    expect([gray[0], gray[31]]).toEqual([255, 0]);
  });

  it('refuses a size that is not a positive integer', async () => {
    await expect(resizeMask(await uniformMask(0), 0, 4)).rejects.toThrow(RangeError);
    await expect(resizeMask(await uniformMask(0), 2.5, 4)).rejects.toThrow(RangeError);
  });
});
