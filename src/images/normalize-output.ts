import sharp, { type Metadata, type OutputInfo } from 'sharp';
import type { MediaType, OutputFormat } from '../jobs/model.js';
import { findStructuralDamage } from './check-structure.js';
import { formatOf, mediaTypeOf, sniffImageType } from './sniff.js';

export interface OutputRequest {
  outputFormat: OutputFormat;
  outputCompression: number | undefined;
  background: 'transparent' | 'opaque' | 'auto';
  maxPixels: number;
}

export interface NormalizedImage {
  bytes: Buffer;
  mediaType: MediaType;
  width: number;
  height: number;
  hasAlpha: boolean;
  reencoded: boolean;
}

/**
 * Pixels a backend's output (a final image or a preview) may have: upscaling backends deliver more than any
 * input, but a decompression bomb is still refused before it is decoded.
 */
export function maxOutputPixels(limits: { maxInputPixels: number }): number {
  return 4 * limits.maxInputPixels;
}

/** What a backend returned is not an image we can deliver. */
export class NotAnImageError extends Error {
  override readonly name = 'NotAnImageError';
}

/**
 * The one place backend output becomes what the caller asked for. Bytes already in the requested format
 * are delivered untouched (no generation loss, no wasted CPU); otherwise they are converted once. Every
 * image's container is checked whole first (src/images/check-structure.ts), so a truncated or damaged
 * answer never reaches a caller.
 */
export async function normalizeOutputImage(input: Uint8Array, request: OutputRequest): Promise<NormalizedImage> {
  const bytes = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  const sourceType = sniffImageType(bytes.subarray(0, 16));
  if (sourceType === undefined) throw new NotAnImageError('the backend returned bytes that are not a png, jpeg or webp image');
  const damage = findStructuralDamage(bytes, sourceType);
  if (damage !== undefined) throw new NotAnImageError(`the backend returned a damaged image: ${damage}`);
  let meta: Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: request.maxPixels, failOn: 'error' }).metadata();
  } catch (err) {
    throw new NotAnImageError(`the backend returned a damaged image: ${String((err as Error).message).split('\n')[0]}`);
  }
  const width = meta.width ?? 0;
  const height = meta.height ?? 0;
  const hasAlpha = meta.hasAlpha === true;
  const flatten = request.background === 'opaque' && hasAlpha;
  if (formatOf(sourceType) === request.outputFormat && !flatten) {
    return { bytes, mediaType: sourceType, width, height, hasAlpha, reencoded: false };
  }
  let pipeline = sharp(bytes, { limitInputPixels: request.maxPixels });
  if (flatten || (request.outputFormat === 'jpeg' && hasAlpha)) pipeline = pipeline.flatten({ background: '#ffffff' });
  const quality = request.outputCompression;
  switch (request.outputFormat) {
    case 'png':
      pipeline = pipeline.png();
      break;
    case 'jpeg':
      pipeline = pipeline.jpeg(quality === undefined ? {} : { quality: Math.max(1, quality) });
      break;
    case 'webp':
      pipeline = pipeline.webp(quality === undefined ? {} : { quality: Math.max(1, quality) });
      break;
  }
  let converted: { data: Buffer; info: OutputInfo };
  try {
    converted = await pipeline.toBuffer({ resolveWithObject: true });
  } catch (err) {
    // The container was whole, but the compressed data inside it was not.
    throw new NotAnImageError(`the backend returned a damaged image: ${String((err as Error).message).split('\n')[0]}`);
  }
  const { data, info } = converted;
  return {
    bytes: data,
    mediaType: mediaTypeOf(request.outputFormat),
    width: info.width,
    height: info.height,
    hasAlpha: info.channels === 4 || info.channels === 2,
    reencoded: true,
  };
}
