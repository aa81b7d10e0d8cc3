import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { toWhiteInpaintMask } from '../../src/images/masks.js';

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
