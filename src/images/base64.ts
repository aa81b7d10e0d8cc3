/**
 * Base64 between Buffers, for images of megabytes. Node 20 converts base64 only through strings, and a
 * string of a whole image (3.5 MB for a 1024² PNG) is allocated outside V8's heap as "external memory",
 * which V8 answers with a full garbage collection every request or two: half the daemon's CPU on the
 * sync path of issue #7. Converting in slices of 64 KiB keeps every string small and short-lived (the
 * cheap young-generation collector takes them) and allocates only the result.
 */

/** Input bytes per slice when encoding: a multiple of 3, so slices never need padding in between. */
const ENCODE_SLICE_BYTES = 48 * 1024;
/** Base64 characters per slice when decoding: a multiple of 4, so each slice decodes on its own. */
const DECODE_SLICE_CHARS = 64 * 1024;

/** Bytes of base64 text for `byteLength` bytes (standard alphabet, padded). */
export function base64Length(byteLength: number): number {
  return Math.ceil(byteLength / 3) * 4;
}

/**
 * The base64 text of `bytes` (standard alphabet, padded), as ASCII bytes: written at the start of `into`
 * when given (at least base64Length long), else into a buffer of its own.
 */
export function encodeBase64(bytes: Uint8Array, into: Buffer = Buffer.allocUnsafe(base64Length(bytes.byteLength))): Buffer {
  const source = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let written = 0;
  for (let from = 0; from < source.length; from += ENCODE_SLICE_BYTES) {
    written += into.write(source.toString('base64', from, Math.min(from + ENCODE_SLICE_BYTES, source.length)), written, 'latin1');
  }
  return into.subarray(0, written);
}

/** Whitespace that servers wrap base64 with; where it appears, slices would not line up with 4-char groups. */
const WRAPPING = [0x0a, 0x0d, 0x20, 0x09];

/**
 * Decodes base64 text given as ASCII bytes, as leniently as Buffer.from(text, 'base64'): either alphabet,
 * padding optional, whitespace ignored. Unbroken text (what servers send) is decoded slice by slice;
 * text with line breaks goes through one string.
 */
export function decodeBase64(text: Buffer): Buffer {
  if (WRAPPING.some((byte) => text.includes(byte))) return Buffer.from(text.toString('latin1'), 'base64');
  const out = Buffer.allocUnsafe(Math.ceil(text.length / 4) * 3);
  let written = 0;
  for (let from = 0; from < text.length; from += DECODE_SLICE_CHARS) {
    written += out.write(text.toString('latin1', from, Math.min(from + DECODE_SLICE_CHARS, text.length)), written, 'base64');
  }
  return out.subarray(0, written);
}
