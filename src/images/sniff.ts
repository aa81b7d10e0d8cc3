import type { MediaType } from '../jobs/model.js';

/** Bytes needed to recognise any format we accept. */
export const SNIFF_BYTES = 16;

/** Recognises png, jpeg and webp by their magic bytes; never trusts a file name or Content-Type. */
export function sniffImageType(head: Uint8Array): MediaType | undefined {
  if (head.length >= 8 && head[0] === 0x89 && head[1] === 0x50 && head[2] === 0x4e && head[3] === 0x47 &&
      head[4] === 0x0d && head[5] === 0x0a && head[6] === 0x1a && head[7] === 0x0a) {
    return 'image/png';
  }
  if (head.length >= 3 && head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return 'image/jpeg';
  if (head.length >= 12 && ascii(head, 0, 4) === 'RIFF' && ascii(head, 8, 12) === 'WEBP') return 'image/webp';
  return undefined;
}

export function formatOf(mediaType: MediaType): 'png' | 'jpeg' | 'webp' {
  return mediaType === 'image/png' ? 'png' : mediaType === 'image/jpeg' ? 'jpeg' : 'webp';
}

export function mediaTypeOf(format: 'png' | 'jpeg' | 'webp'): MediaType {
  return format === 'png' ? 'image/png' : format === 'jpeg' ? 'image/jpeg' : 'image/webp';
}

function ascii(bytes: Uint8Array, from: number, to: number): string {
  return String.fromCharCode(...bytes.subarray(from, to));
}
