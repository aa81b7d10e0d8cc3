import sharp from 'sharp';

/**
 * Converts an OpenAI edit mask (a PNG whose alpha 0 marks where to edit) into the convention LocalAI and
 * vLLM-Omni use: a single-channel grayscale PNG where white (255) means inpaint, i.e. L = 255 − alpha.
 * Partial alpha maps linearly, so a feathered OpenAI mask stays feathered.
 *
 * A mask without an alpha channel counts as fully opaque (nothing to edit) — the same reading OpenAI gives it;
 * rejecting such masks is the request validator's job, not this converter's.
 */
export async function toWhiteInpaintMask(pngBytes: Uint8Array): Promise<Buffer> {
  return sharp(pngBytes)
    .ensureAlpha()
    .extractChannel('alpha')
    .negate()
    // Without this sharp may tag the single band as sRGB and write a 3-channel PNG some servers misread.
    .toColourspace('b-w')
    .png()
    .toBuffer();
}
