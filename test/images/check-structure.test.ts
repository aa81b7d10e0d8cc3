import { randomBytes } from 'node:crypto';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { findStructuralDamage } from '../../src/images/check-structure.js';
import type { MediaType } from '../../src/jobs/model.js';

/** Noise compresses badly, so the files are large enough to cut in many places. */
async function noisy(format: 'png' | 'jpeg' | 'webp', options: { alpha?: boolean; progressive?: boolean; lossless?: boolean } = {}): Promise<Buffer> {
  const channels = options.alpha ? 4 : 3;
  const pipeline = sharp(randomBytes(96 * 80 * channels), { raw: { width: 96, height: 80, channels } });
  if (format === 'png') return pipeline.png().toBuffer();
  if (format === 'jpeg') return pipeline.jpeg({ progressive: options.progressive === true, quality: 90 }).toBuffer();
  return pipeline.webp({ lossless: options.lossless === true, quality: 80 }).toBuffer();
}

const samples: Array<{ name: string; type: MediaType; bytes: Buffer }> = [];

beforeAll(async () => {
  samples.push(
    { name: 'png, RGB', type: 'image/png', bytes: await noisy('png') },
    { name: 'png, RGBA', type: 'image/png', bytes: await noisy('png', { alpha: true }) },
    { name: 'jpeg, baseline', type: 'image/jpeg', bytes: await noisy('jpeg') },
    { name: 'jpeg, progressive', type: 'image/jpeg', bytes: await noisy('jpeg', { progressive: true }) },
    { name: 'webp, lossy', type: 'image/webp', bytes: await noisy('webp') },
    { name: 'webp, lossy with alpha (VP8X + ALPH)', type: 'image/webp', bytes: await noisy('webp', { alpha: true }) },
    { name: 'webp, lossless', type: 'image/webp', bytes: await noisy('webp', { lossless: true }) },
  );
});

describe('findStructuralDamage', () => {
  it('finds nothing wrong with whole images of every format sharp writes', () => {
    for (const { name, type, bytes } of samples) expect(findStructuralDamage(bytes, type), name).toBeUndefined();
  });

  it('finds every cut: an image shortened at any of 60 places is damaged', () => {
    for (const { name, type, bytes } of samples) {
      for (let i = 1; i <= 60; i += 1) {
        const cut = Math.floor((bytes.length * i) / 61);
        expect(findStructuralDamage(bytes.subarray(0, cut), type), `${name} cut at ${cut} of ${bytes.length}`).toBeDefined();
      }
      // The very last byte matters too.
      expect(findStructuralDamage(bytes.subarray(0, bytes.length - 1), type), `${name} without its last byte`).toBeDefined();
    }
  });

  it('finds a single changed byte anywhere in a png (chunk CRCs)', () => {
    const png = samples.find((s) => s.name === 'png, RGB')!.bytes;
    for (let i = 0; i < 40; i += 1) {
      const at = 8 + Math.floor(((png.length - 8) * i) / 40);
      const damaged = Buffer.from(png);
      damaged[at] = (damaged[at] as number) ^ 0x10;
      expect(findStructuralDamage(damaged, 'image/png'), `byte ${at} of ${png.length}`).toMatch(/png/);
    }
  });

  it('names what is wrong', () => {
    const png = samples.find((s) => s.name === 'png, RGB')!.bytes;
    expect(findStructuralDamage(png.subarray(0, png.length - 12), 'image/png')).toBe('png cut short: no IEND chunk');
    expect(findStructuralDamage(png.subarray(0, 100), 'image/png')).toMatch(/cut short inside its IDAT chunk/);
    const jpeg = samples.find((s) => s.name === 'jpeg, baseline')!.bytes;
    expect(findStructuralDamage(jpeg.subarray(0, jpeg.length - 2), 'image/jpeg')).toBe('jpeg cut short inside its image data');
    const webp = samples.find((s) => s.name === 'webp, lossy')!.bytes;
    expect(findStructuralDamage(webp.subarray(0, 40), 'image/webp')).toMatch(/^webp cut short: 40 of \d+ bytes$/);
  });

  it('refuses garbage behind a valid signature', () => {
    const garbage = randomBytes(4_000);
    const withSignature = (head: number[]) => Buffer.concat([Buffer.from(head), garbage]);
    expect(findStructuralDamage(withSignature([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), 'image/png')).toBeDefined();
    expect(findStructuralDamage(withSignature([0xff, 0xd8, 0xff]), 'image/jpeg')).toBeDefined();
    const riff = Buffer.concat([Buffer.from('RIFF'), Buffer.alloc(4), Buffer.from('WEBP'), garbage]);
    riff.writeUInt32LE(riff.length - 8, 4);
    expect(findStructuralDamage(riff, 'image/webp')).toBeDefined();
  });

  it('refuses a png whose first chunk is not IHDR, and one without image data', async () => {
    const png = samples.find((s) => s.name === 'png, RGB')!.bytes;
    const ihdrEnd = 8 + 12 + 13;
    const iend = png.subarray(png.length - 12);
    expect(findStructuralDamage(Buffer.concat([png.subarray(0, 8), iend]), 'image/png')).toBe('png does not start with an IHDR chunk');
    expect(findStructuralDamage(Buffer.concat([png.subarray(0, ihdrEnd), iend]), 'image/png')).toBe('png has no IDAT chunk');
  });

  it('tolerates bytes after the end marker, as decoders do', () => {
    const tail = Buffer.from('trailing bytes some encoders leave behind');
    for (const { name, type, bytes } of samples) {
      expect(findStructuralDamage(Buffer.concat([bytes, tail]), type), name).toBeUndefined();
    }
  });
});
