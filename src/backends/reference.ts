import { createHash } from 'node:crypto';
import sharp, { type PngOptions, type Sharp } from 'sharp';
import type { ReferenceBackendConfig } from '../config/schema.js';
import { BackendError, sanitizeUpstreamMessage } from './errors.js';
import type { BackendCallOptions, BackendCallResult, BackendWarning, ImageBackend } from './types.js';

/**
 * The built-in reference backend: no GPU, no model. It draws a deterministic abstract picture (gradient
 * plus shapes) from (prompt, seed, size) so the whole daemon — queue, runner, signing, billing — can be
 * exercised end to end. Edits really use their inputs: the mask decides where the drawn pattern replaces
 * the first image, and further images tint the pattern.
 *
 * No text is drawn on purpose: SVG text needs fonts, and fontconfig setups differ between machines, which
 * would break both rendering and byte-for-byte determinism.
 */

export type SleepFn = (ms: number, signal: AbortSignal) => Promise<void>;

export interface ReferenceBackendDeps {
  /** Simulated model time; tests pass a fake. @default sleepWithSignal (real timers) */
  sleep?: SleepFn;
  /** Clock for `response.timestampMs` and for the time already spent rendering. @default Date.now */
  now?: () => number;
}

/** An RGB colour, channels 0..255. */
export interface Rgb {
  r: number;
  g: number;
  b: number;
}

/** Decoded pixels, always 4 channels (RGBA, 8 bits each), row-major. */
export interface RawRgba {
  data: Buffer;
  width: number;
  height: number;
}

/** cairo, which librsvg draws with, refuses surfaces above 32767 px a side; stay well clear of it. */
const MAX_SIDE_PX = 16_384;

/**
 * zlib level 6 (sharp's default) costs about twice the time of level 3 on these flat-coloured pictures
 * for a few percent of size; the renderer exists to be fast, so take the cheaper level.
 */
const PNG_OPTIONS: PngOptions = { compressionLevel: 3, adaptiveFiltering: false };

/** Resolves after `ms`, or rejects with `signal.reason` as soon as the signal aborts. */
export function sleepWithSignal(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      // Long-lived signals (one per job) would otherwise collect a listener per sleep.
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

export function createReferenceBackend(config: ReferenceBackendConfig, deps: ReferenceBackendDeps = {}): ImageBackend {
  const sleep = deps.sleep ?? sleepWithSignal;
  const now = deps.now ?? Date.now;

  return {
    id: config.id,
    type: 'reference',
    maxImagesPerCall: config.maxImagesPerCall,
    rerunInterruptedJobs: config.rerunInterruptedJobs,

    async generate(options: BackendCallOptions): Promise<BackendCallResult> {
      const { signal } = options;
      signal.throwIfAborted();
      const startedMs = now();
      const { width, height } = parseSize(config.id, options.size);
      if (!Number.isInteger(options.n) || options.n < 1 || options.n > config.maxImagesPerCall) {
        throw new BackendError(
          config.id,
          'rejected',
          `n must be a whole number from 1 to ${config.maxImagesPerCall} for one call, got ${options.n}`,
        );
      }

      const warnings = unsupportedOptionWarnings(options);
      const images: Uint8Array[] = [];
      const inputs = options.images ?? [];
      const firstImage = inputs[0];

      if (firstImage === undefined) {
        if (options.mask !== undefined) {
          warnings.push({ type: 'other', feature: 'mask', message: 'a mask without an input image has nothing to apply to; ignored' });
        }
        const transparent = options.background === 'transparent';
        for (let i = 0; i < options.n; i++) {
          signal.throwIfAborted();
          images.push(await renderPattern(options.prompt, options.seed + i, width, height, transparent));
        }
      } else {
        const prepared = await prepareEditInputs(config.id, {
          image: firstImage.path,
          mask: options.mask?.path,
          references: inputs.slice(1).map((img) => img.path),
          width,
          height,
        });
        if (!prepared.maskHasAlpha) {
          warnings.push({
            type: 'other',
            feature: 'mask',
            message: 'the mask has no alpha channel, so it marks nothing to edit (alpha 0 = edit here); the image is kept as it is',
          });
        }
        for (let i = 0; i < options.n; i++) {
          signal.throwIfAborted();
          images.push(await applyEdit(prepared, options.prompt, options.seed + i, options.background));
        }
      }

      // A GPU takes a fixed time per image whatever the host does, so the simulated latency is the call's
      // whole duration: rendering counts towards it. Waiting after rendering lets bad inputs fail at once.
      const remainingMs = config.latencyMsPerImage * options.n - (now() - startedMs);
      if (remainingMs > 0) await sleep(remainingMs, signal);
      signal.throwIfAborted();

      return { images, warnings, response: { timestampMs: now(), modelId: options.model } };
    },

    async checkHealth(): Promise<void> {
      // Nothing remote to reach: the renderer is in-process.
    },
  };
}

function unsupportedOptionWarnings(options: BackendCallOptions): BackendWarning[] {
  const warnings: BackendWarning[] = [];
  if (options.negativePrompt !== undefined) {
    warnings.push({ type: 'unsupported', feature: 'negative_prompt', message: 'the reference renderer ignores negative_prompt' });
  }
  if (options.numInferenceSteps !== undefined) {
    warnings.push({
      type: 'unsupported',
      feature: 'num_inference_steps',
      message: 'the reference renderer has no diffusion steps; num_inference_steps is ignored',
    });
  }
  if (options.guidanceScale !== undefined) {
    warnings.push({ type: 'unsupported', feature: 'guidance_scale', message: 'the reference renderer ignores guidance_scale' });
  }
  return warnings;
}

function parseSize(backendId: string, size: string): { width: number; height: number } {
  const match = /^(\d{1,5})x(\d{1,5})$/.exec(size);
  const width = Number(match?.[1]);
  const height = Number(match?.[2]);
  if (!match || width < 1 || height < 1 || width > MAX_SIDE_PX || height > MAX_SIDE_PX) {
    throw new BackendError(backendId, 'rejected', `size must be WIDTHxHEIGHT with each side 1..${MAX_SIDE_PX}, got "${size}"`);
  }
  return { width, height };
}

// ---------------------------------------------------------------------------------------------------------
// Pattern rendering (pure: same arguments → same bytes)

/**
 * An endless byte source derived from sha256(prompt, seed). The NUL separators keep ("a1", 2) and
 * ("a", 12) apart, which plain concatenation would not.
 */
function hashBytes(prompt: string, seed: number): () => number {
  let block = 0;
  let digest = Buffer.alloc(0);
  let pos = 0;
  return () => {
    if (pos >= digest.length) {
      digest = createHash('sha256').update(`${prompt}\u0000${seed}\u0000${block}`).digest();
      block += 1;
      pos = 0;
    }
    const byte = digest[pos] as number;
    pos += 1;
    return byte;
  };
}

function hslToRgb(h: number, s: number, l: number): Rgb {
  const a = s * Math.min(l, 1 - l);
  const f = (n: number): number => {
    const k = (n + h / 30) % 12;
    return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return { r: f(0), g: f(8), b: f(4) };
}

function hex(c: Rgb): string {
  return `#${[c.r, c.g, c.b].map((v) => v.toString(16).padStart(2, '0')).join('')}`;
}

function num(v: number): string {
  return v.toFixed(1);
}

/**
 * The SVG for one picture. `tint` (the mean colour of an edit's extra images) pulls every colour halfway
 * towards it, so those images visibly shape the result.
 */
export function buildPatternSvg(
  prompt: string,
  seed: number,
  width: number,
  height: number,
  transparent: boolean,
  tint?: Rgb,
): string {
  const next = hashBytes(prompt, seed);
  const unit = (): number => (next() * 256 + next()) / 65_535;
  const colour = (): string => {
    const c = hslToRgb(unit() * 360, 0.45 + unit() * 0.5, 0.3 + unit() * 0.45);
    if (tint === undefined) return hex(c);
    return hex({ r: Math.round((c.r + tint.r) / 2), g: Math.round((c.g + tint.g) / 2), b: Math.round((c.b + tint.b) / 2) });
  };
  const side = Math.min(width, height);
  const parts: string[] = [];

  if (!transparent) {
    const angle = unit() * 2 * Math.PI;
    const dx = Math.cos(angle) / 2;
    const dy = Math.sin(angle) / 2;
    parts.push(
      `<defs><linearGradient id="bg" x1="${num(50 - dx * 100)}%" y1="${num(50 - dy * 100)}%" x2="${num(50 + dx * 100)}%" y2="${num(50 + dy * 100)}%">` +
        `<stop offset="0" stop-color="${colour()}"/><stop offset="0.5" stop-color="${colour()}"/><stop offset="1" stop-color="${colour()}"/>` +
        `</linearGradient></defs>`,
      `<rect x="0" y="0" width="${width}" height="${height}" fill="url(#bg)"/>`,
    );
  }

  const shapes = 5 + (next() % 5);
  for (let i = 0; i < shapes; i++) {
    const kind = next() % 4;
    const cx = unit() * width;
    const cy = unit() * height;
    const size = side * (0.06 + unit() * 0.2);
    const fill = `fill="${colour()}" fill-opacity="${(0.55 + unit() * 0.45).toFixed(2)}"`;
    if (kind === 0) {
      parts.push(`<circle cx="${num(cx)}" cy="${num(cy)}" r="${num(size)}" ${fill}/>`);
    } else if (kind === 1) {
      const w = size * (1 + unit());
      const h = size * (0.5 + unit());
      const rotate = num(unit() * 180);
      parts.push(
        `<rect x="${num(cx - w / 2)}" y="${num(cy - h / 2)}" width="${num(w)}" height="${num(h)}" ` +
          `transform="rotate(${rotate} ${num(cx)} ${num(cy)})" ${fill}/>`,
      );
    } else if (kind === 2) {
      const rx = size * (0.6 + unit() * 0.8);
      const ry = size * (0.3 + unit() * 0.5);
      parts.push(
        `<ellipse cx="${num(cx)}" cy="${num(cy)}" rx="${num(rx)}" ry="${num(ry)}" ` +
          `transform="rotate(${num(unit() * 180)} ${num(cx)} ${num(cy)})" ${fill}/>`,
      );
    } else {
      const start = unit() * 2 * Math.PI;
      const points = [0, 1, 2]
        .map((k) => {
          const a = start + (k * 2 * Math.PI) / 3 + (unit() - 0.5);
          return `${num(cx + Math.cos(a) * size)},${num(cy + Math.sin(a) * size)}`;
        })
        .join(' ');
      parts.push(`<polygon points="${points}" ${fill}/>`);
    }
  }

  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">` +
    parts.join('') +
    `</svg>`
  );
}

function svgPipeline(svg: string): Sharp {
  // density 72 makes one SVG user unit one pixel, so the output is exactly width × height.
  return sharp(Buffer.from(svg), { density: 72 });
}

/**
 * Renders the picture for (prompt, seed) as PNG bytes: RGBA with a see-through background when
 * `transparent`, otherwise RGB over a gradient.
 */
export async function renderPattern(
  prompt: string,
  seed: number,
  width: number,
  height: number,
  transparent: boolean,
  tint?: Rgb,
): Promise<Buffer> {
  const pipeline = svgPipeline(buildPatternSvg(prompt, seed, width, height, transparent, tint));
  return (transparent ? pipeline.ensureAlpha() : pipeline.removeAlpha()).png(PNG_OPTIONS).toBuffer();
}

/** The same picture as raw RGBA pixels, for blending into an edit. */
export async function renderPatternRaw(
  prompt: string,
  seed: number,
  width: number,
  height: number,
  transparent: boolean,
  tint?: Rgb,
): Promise<RawRgba> {
  const { data, info } = await svgPipeline(buildPatternSvg(prompt, seed, width, height, transparent, tint))
    .ensureAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.width !== width || info.height !== height || info.channels !== 4) {
    throw new Error(`pattern rendered as ${info.width}x${info.height}x${info.channels}, expected ${width}x${height}x4`);
  }
  return { data, width, height };
}

// ---------------------------------------------------------------------------------------------------------
// Edits

/** Share of the original kept everywhere when there is no mask. */
const UNMASKED_KEEP = 0.5;

/**
 * Mixes two RGBA buffers of the same size. `keep` is the OpenAI mask's alpha per pixel: 255 keeps the
 * original, 0 takes the pattern, values between blend. Without a mask both are mixed half and half.
 * Colours are mixed premultiplied by their alpha so a see-through pixel does not bleed its (meaningless)
 * colour into the result; fully kept or fully replaced pixels are copied exactly.
 */
export function blendWithMask(original: Uint8Array, pattern: Uint8Array, keep: Uint8Array | undefined): Buffer {
  if (original.length !== pattern.length || original.length % 4 !== 0) {
    throw new Error(`cannot blend ${original.length} bytes with ${pattern.length} bytes of RGBA`);
  }
  if (keep !== undefined && keep.length * 4 !== original.length) {
    throw new Error(`mask has ${keep.length} pixels, image has ${original.length / 4}`);
  }
  const out = Buffer.allocUnsafe(original.length);
  for (let p = 0, i = 0; i < original.length; p++, i += 4) {
    const m = keep === undefined ? -1 : (keep[p] as number);
    if (m === 255) {
      out[i] = original[i] as number;
      out[i + 1] = original[i + 1] as number;
      out[i + 2] = original[i + 2] as number;
      out[i + 3] = original[i + 3] as number;
      continue;
    }
    if (m === 0) {
      out[i] = pattern[i] as number;
      out[i + 1] = pattern[i + 1] as number;
      out[i + 2] = pattern[i + 2] as number;
      out[i + 3] = pattern[i + 3] as number;
      continue;
    }
    const k = m === -1 ? UNMASKED_KEEP : m / 255;
    const originalAlpha = original[i + 3] as number;
    const patternAlpha = pattern[i + 3] as number;
    if (originalAlpha === 255 && patternAlpha === 255) {
      // The common opaque case, without the per-channel division below (roughly halves a 1024² blend).
      const kp = 1 - k;
      out[i] = ((original[i] as number) * k + (pattern[i] as number) * kp + 0.5) | 0;
      out[i + 1] = ((original[i + 1] as number) * k + (pattern[i + 1] as number) * kp + 0.5) | 0;
      out[i + 2] = ((original[i + 2] as number) * k + (pattern[i + 2] as number) * kp + 0.5) | 0;
      out[i + 3] = 255;
      continue;
    }
    const wo = originalAlpha * k;
    const wp = patternAlpha * (1 - k);
    const alpha = wo + wp;
    if (alpha === 0) {
      out[i] = 0;
      out[i + 1] = 0;
      out[i + 2] = 0;
      out[i + 3] = 0;
      continue;
    }
    for (let c = 0; c < 3; c++) {
      out[i + c] = Math.round(((original[i + c] as number) * wo + (pattern[i + c] as number) * wp) / alpha);
    }
    out[i + 3] = Math.round(alpha);
  }
  return out;
}

/** Encoded image bytes, or the path of a file holding them. */
export type ImageSource = string | Buffer;

export interface PrepareEditParams {
  /** The image the mask applies to. */
  image: ImageSource;
  /** OpenAI mask (alpha 0 = edit here), the same size as `image`. */
  mask: ImageSource | undefined;
  /** Further input images; their mean colour tints the pattern. */
  references: ImageSource[];
  width: number;
  height: number;
}

/** An edit's inputs decoded once per call, at the output size, ready to blend with each image's pattern. */
export interface PreparedEdit {
  original: RawRgba;
  /** Whether the first image had an alpha channel (kept in the output when background is `auto`). */
  originalHasAlpha: boolean;
  /**
   * The mask's alpha per output pixel; undefined without a mask. A mask without an alpha channel reads as
   * alpha 255 everywhere (keep everything), as decoders treat a missing alpha channel as opaque.
   */
  maskAlpha: Uint8Array | undefined;
  /** False when a mask was given but had no alpha channel, so it marks nothing to edit. */
  maskHasAlpha: boolean;
  tint: Rgb | undefined;
}

async function decodeInput<T>(backendId: string, what: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    const detail = sanitizeUpstreamMessage(err instanceof Error ? err.message : String(err));
    throw new BackendError(backendId, 'rejected', `${what} could not be decoded`, { details: [detail], cause: err });
  }
}

/** Decodes to RGBA at exactly width × height (cover, centred), as the edit blends pixel by pixel. */
async function decodeCoverRgba(input: ImageSource, width: number, height: number): Promise<{ data: Buffer; hasAlpha: boolean }> {
  const meta = await sharp(input).metadata();
  let pipeline = sharp(input);
  // Resampling to the same size can still shift values by one; skipping it keeps unmasked pixels exact.
  if (meta.width !== width || meta.height !== height) pipeline = pipeline.resize(width, height, { fit: 'cover' });
  const { data, info } = await pipeline.toColourspace('srgb').ensureAlpha().raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  if (info.channels !== 4) throw new Error(`decoded to ${info.channels} channels, expected 4`);
  return { data, hasAlpha: meta.hasAlpha === true };
}

/**
 * Decodes the first image and the mask, both scaled to the output size the same way (cover, centred), so
 * the mask keeps lining up with the picture; and averages the other images into a tint.
 */
export async function prepareEditInputs(backendId: string, params: PrepareEditParams): Promise<PreparedEdit> {
  const { width, height } = params;

  const { original, originalHasAlpha } = await decodeInput(backendId, 'input image 1', async () => {
    const { data, hasAlpha } = await decodeCoverRgba(params.image, width, height);
    return { original: { data, width, height }, originalHasAlpha: hasAlpha };
  });

  let maskAlpha: Uint8Array | undefined;
  let maskHasAlpha = true;
  const mask = params.mask;
  if (mask !== undefined) {
    maskAlpha = await decodeInput(backendId, 'mask', async () => {
      const { data, hasAlpha } = await decodeCoverRgba(mask, width, height);
      if (!hasAlpha) {
        maskHasAlpha = false;
        return new Uint8Array(width * height).fill(255);
      }
      const alpha = new Uint8Array(width * height);
      for (let p = 0; p < alpha.length; p++) alpha[p] = data[p * 4 + 3] as number;
      return alpha;
    });
  }

  let tint: Rgb | undefined;
  if (params.references.length > 0) {
    const sum = { r: 0, g: 0, b: 0 };
    for (const [index, ref] of params.references.entries()) {
      const mean = await decodeInput(backendId, `input image ${index + 2}`, () => meanColour(ref));
      sum.r += mean.r;
      sum.g += mean.g;
      sum.b += mean.b;
    }
    const count = params.references.length;
    tint = { r: Math.round(sum.r / count), g: Math.round(sum.g / count), b: Math.round(sum.b / count) };
  }

  return { original, originalHasAlpha, maskAlpha, maskHasAlpha, tint };
}

/** Mean colour of an image, with see-through parts counted as mid grey. */
async function meanColour(source: ImageSource): Promise<Rgb> {
  // A 16×16 thumbnail averages as well as the full image for this purpose, at a fraction of the cost.
  const { data, info } = await sharp(source)
    .resize(16, 16, { fit: 'fill' })
    .flatten({ background: '#808080' })
    .toColourspace('srgb')
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected 3`);
  let r = 0;
  let g = 0;
  let b = 0;
  for (let i = 0; i < data.length; i += 3) {
    r += data[i] as number;
    g += data[i + 1] as number;
    b += data[i + 2] as number;
  }
  const pixels = data.length / 3;
  return { r: Math.round(r / pixels), g: Math.round(g / pixels), b: Math.round(b / pixels) };
}

/**
 * One edited picture as PNG bytes: the pattern for (prompt, seed) painted where the mask says edit.
 * The output keeps an alpha channel when the caller asked for a transparent background, or for `auto`
 * when the first image had one; otherwise it is flattened onto white.
 */
export async function applyEdit(
  prepared: PreparedEdit,
  prompt: string,
  seed: number,
  background: BackendCallOptions['background'],
): Promise<Buffer> {
  const { width, height } = prepared.original;
  const transparent = background === 'transparent';
  const pattern = await renderPatternRaw(prompt, seed, width, height, transparent, prepared.tint);
  const blended = blendWithMask(prepared.original.data, pattern.data, prepared.maskAlpha);
  const keepAlpha = transparent || (background === 'auto' && prepared.originalHasAlpha);
  const pipeline = sharp(blended, { raw: { width, height, channels: 4 } });
  return (keepAlpha ? pipeline : pipeline.flatten({ background: '#ffffff' })).png(PNG_OPTIONS).toBuffer();
}
