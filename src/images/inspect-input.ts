import { open } from 'node:fs/promises';
import sharp, { type Metadata } from 'sharp';
import { PixeldError } from '../errors.js';
import type { MediaType } from '../jobs/model.js';
import { SNIFF_BYTES, sniffImageType } from './sniff.js';

export interface InputImageInfo {
  mediaType: MediaType;
  width: number;
  height: number;
  hasAlpha: boolean;
}

export interface InspectLimits {
  maxInputPixels: number;
}

/**
 * Checks an uploaded image before any job exists: the bytes must be png, jpeg or webp (sniffed, whatever
 * the file name says); the header's dimensions must be within the pixel limit, checked before decoding so a
 * decompression bomb is refused without being expanded; and the whole image must then decode.
 */
export async function inspectInputImage(file: string, limits: InspectLimits, param: string): Promise<InputImageInfo> {
  const mediaType = sniffImageType(await readHead(file));
  if (mediaType === undefined) {
    throw new PixeldError('invalid_image', `${param} is not a png, jpeg or webp image`, { param });
  }
  let meta: Metadata;
  try {
    meta = await sharp(file, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw new PixeldError('invalid_image', `${param} could not be read as an image: ${firstLine(err)}`, { param, cause: err });
  }
  const width = meta.width ?? 0;
  const height = meta.height ?? 0;
  if (width <= 0 || height <= 0) throw new PixeldError('invalid_image', `${param} has no dimensions`, { param });
  if (width * height > limits.maxInputPixels) {
    throw new PixeldError(
      'image_too_large',
      `${param} is ${width}x${height} pixels; the limit is ${limits.maxInputPixels} pixels in all`,
      { param },
    );
  }
  if ((meta.pages ?? 1) > 1) {
    throw new PixeldError('invalid_image', `${param} is animated (${meta.pages} frames); send a still image`, { param });
  }
  try {
    // Decodes every pixel, streaming it down to one pixel so no bitmap is kept. stats() held ~100 MB
    // while checking a 100 MB PNG (33 MP) and took 3–5× the CPU.
    await sharp(file, { limitInputPixels: limits.maxInputPixels, failOn: 'error' }).resize(1, 1, { fit: 'fill' }).raw().toBuffer();
  } catch (err) {
    throw new PixeldError('invalid_image', `${param} is damaged and does not decode: ${firstLine(err)}`, { param, cause: err });
  }
  return { mediaType, width, height, hasAlpha: meta.hasAlpha === true };
}

/** The OpenAI mask rules: PNG with an alpha channel, the same size as the first image. */
export function checkMask(mask: InputImageInfo, first: InputImageInfo, param: string): void {
  if (mask.mediaType !== 'image/png') {
    throw new PixeldError('invalid_mask', `${param} must be a PNG with an alpha channel`, { param });
  }
  if (!mask.hasAlpha) {
    throw new PixeldError('invalid_mask', `${param} has no alpha channel; transparent pixels (alpha 0) mark where to edit`, { param });
  }
  if (mask.width !== first.width || mask.height !== first.height) {
    throw new PixeldError(
      'mask_size_mismatch',
      `${param} is ${mask.width}x${mask.height} but the first image is ${first.width}x${first.height}; they must match`,
      { param },
    );
  }
}

async function readHead(file: string): Promise<Uint8Array> {
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(SNIFF_BYTES);
    const { bytesRead } = await handle.read(buffer, 0, SNIFF_BYTES, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

function firstLine(err: unknown): string {
  return String((err as Error)?.message ?? err).split('\n')[0]!.slice(0, 200);
}
