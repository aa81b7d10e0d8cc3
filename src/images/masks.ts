import sharp from 'sharp';

/**
 * The one place an OpenAI edit mask is turned into what a backend reads. The OpenAI convention is a PNG
 * whose alpha 0 marks where to edit (alpha 255: keep). Backends disagree (shared/spec/backends.md, "Masks"):
 * LocalAI and vLLM-Omni inpaint white, AUTOMATIC1111 inpaints where alpha > 128 or where the gray level is
 * > 128, ComfyUI's LoadImageMask reads one chosen channel. Every converter here maps alpha linearly, so a
 * feathered OpenAI mask stays feathered wherever the backend honours soft masks.
 *
 * A mask without an alpha channel counts as fully opaque (nothing to edit) — the same reading OpenAI gives
 * it; rejecting such masks is the request validator's job, not the converters'.
 */

/**
 * LocalAI / vLLM-Omni convention: a single-channel grayscale PNG where white (255) means inpaint,
 * i.e. L = 255 − alpha.
 */
export async function toWhiteInpaintMask(pngBytes: Uint8Array): Promise<Buffer> {
  return inverseAlphaAsGray(pngBytes);
}

/**
 * AUTOMATIC1111 / Forge convention, sent as `mask` with `inpainting_mask_invert: 0`: a single-channel
 * grayscale PNG where white means inpaint (L = 255 − alpha).
 *
 * Why gray and not an RGBA mask with inverted alpha: A1111's `create_binary_mask` reads the alpha channel
 * only when the image is RGBA *and* its alpha is not entirely 255; otherwise it reads the colour channels
 * as luma. An inverted-alpha mask for "edit everything" (OpenAI alpha all 0 → alpha all 255) would
 * therefore be read from its colour channels instead, and a gray+alpha PNG (PIL mode LA) has its alpha
 * ignored altogether. A plain L image has exactly one reading. Because A1111 rounds the mask at > 128
 * (the "Round mask" default), OpenAI alpha ≤ 126 is inpainted and ≥ 127 kept; with rounding off it
 * uses the linear value.
 */
export async function toA1111Mask(pngBytes: Uint8Array): Promise<Buffer> {
  return inverseAlphaAsGray(pngBytes);
}

/** White = inpaint everywhere, the size of the given image: an edit without a mask, for servers that need one. */
export async function wholeImageWhiteMask(imageBytes: Uint8Array): Promise<Buffer> {
  const { width, height } = await sharp(imageBytes).metadata();
  if (width === undefined || height === undefined) throw new Error('cannot read the size of the image to mask');
  return sharp({ create: { width, height, channels: 3, background: { r: 255, g: 255, b: 255 } } }).grayscale().png().toBuffer();
}

export type MaskChannel = 'red' | 'green' | 'blue' | 'alpha';

/**
 * A mask for ComfyUI's `LoadImageMask` reading `channel`. That node reads a colour channel as
 * mask = value / 255 but the alpha channel as mask = 1 − alpha / 255 (and mask 1 = inpaint), so:
 * - `alpha`: an RGBA PNG with black colour and the OpenAI alpha unchanged — the node's own inversion
 *   makes alpha 0 the inpainted area;
 * - a colour channel: an opaque RGB PNG whose three channels all hold 255 − alpha, so the choice of
 *   colour in the workflow cannot matter and the file looks like the white-inpaint mask it is.
 * ComfyUI's `LoadImage` MASK output (1 − alpha) also reads the `alpha` form correctly.
 */
export async function toChannelMask(pngBytes: Uint8Array, channel: MaskChannel): Promise<Buffer> {
  if (channel !== 'alpha') {
    const gray = await sharp(pngBytes).ensureAlpha().extractChannel('alpha').negate().toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
    const { width, height } = gray.info;
    const rgb = Buffer.alloc(width * height * 3);
    for (let i = 0; i < width * height; i += 1) {
      const v = gray.data[i]!;
      rgb[i * 3] = v;
      rgb[i * 3 + 1] = v;
      rgb[i * 3 + 2] = v;
    }
    return sharp(rgb, { raw: { width, height, channels: 3 } }).png().toBuffer();
  }
  const alpha = await sharp(pngBytes).ensureAlpha().extractChannel('alpha').toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
  const { width, height } = alpha.info;
  const rgba = Buffer.alloc(width * height * 4);
  for (let i = 0; i < width * height; i += 1) rgba[i * 4 + 3] = alpha.data[i]!;
  return sharp(rgba, { raw: { width, height, channels: 4 } }).png().toBuffer();
}

/**
 * Resizes an OpenAI mask (still alpha 0 = edit) to `width`×`height`, for backends that need the mask at
 * the output size rather than the input size. The aspect ratio is not kept: a backend that stretches the
 * input image to the output size must stretch the mask the same way. Linear interpolation: no ringing
 * beyond the original values, and hard edges become a short ramp rather than jagged steps. The result is
 * an RGBA PNG with black colour, ready for any converter above.
 */
export async function resizeMask(pngBytes: Uint8Array, width: number, height: number): Promise<Buffer> {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new RangeError(`mask target size must be positive integers, got ${width}x${height}`);
  }
  const alpha = await sharp(pngBytes)
    .ensureAlpha()
    .extractChannel('alpha')
    .toColourspace('b-w')
    .resize(width, height, { fit: 'fill', kernel: 'linear' })
    .raw()
    .toBuffer({ resolveWithObject: true });
  const rgba = Buffer.alloc(width * height * 4);
  // The resize keeps the single band; read it by its own channel count in case libvips adds one.
  const stride = alpha.info.channels;
  for (let i = 0; i < width * height; i += 1) rgba[i * 4 + 3] = alpha.data[i * stride]!;
  return sharp(rgba, { raw: { width, height, channels: 4 } }).png().toBuffer();
}

async function inverseAlphaAsGray(pngBytes: Uint8Array): Promise<Buffer> {
  return sharp(pngBytes)
    .ensureAlpha()
    .extractChannel('alpha')
    .negate()
    // Without this sharp may tag the single band as sRGB and write a 3-channel PNG some servers misread.
    .toColourspace('b-w')
    .png()
    .toBuffer();
}
