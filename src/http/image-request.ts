import { createHash, randomInt } from 'node:crypto';
import { stat, writeFile } from 'node:fs/promises';
import { z } from 'zod';
import type { ModelCatalog } from '../backends/catalog.js';
import type { ImageSize } from '../backends/types.js';
import type { Config, ModelConfig } from '../config/schema.js';
import { PixeldError } from '../errors.js';
import { removeQuietly, sha256OfFile, storageError } from '../images/blob-store.js';
import { fetchRemoteImage, SYSTEM_REMOTE_IMAGE_DEPS, type FetchRemoteImageDeps } from '../images/fetch-remote-image.js';
import { checkMask, inspectInputImage, type InputImageInfo } from '../images/inspect-input.js';
import type { ImageJobRequest, JobKind, JobParams, PreparedInput } from '../jobs/model.js';
import type { RequestBody } from './read-body.js';

/**
 * Turns a request body into a validated job request, or a 4xx naming the field. Every input image is
 * sniffed, size-checked and decoded here, before any job exists.
 *
 * Fields: the OpenAI image fields are validated; the extension fields a model declares in config
 * (`seed`, `negative_prompt`, `num_inference_steps`, `guidance_scale`) are passed to its backend and refused
 * with 400 on models that do not declare them; any other field is ignored.
 */

export interface ImageRequestContext {
  catalog: ModelCatalog;
  limits: Config['limits'];
  tmpPath: () => string;
  /** How https image_urls are resolved and connected to when limits.fetchRemoteImages is on. @default SYSTEM_REMOTE_IMAGE_DEPS */
  remoteImages?: FetchRemoteImageDeps;
  /** The request goes to an async submit, which answers at once: `stream: true` is refused there. @default false */
  asyncSubmit?: boolean;
  /** Aborts when the client goes away: remote image downloads stop. */
  signal?: AbortSignal;
}

/** What a `stream: true` request wants besides its job. */
export interface StreamRequest {
  /** Partial images to send before the final one, 0–3 (`partial_images`). */
  partialImages: number;
}

export interface ParsedImageRequest extends ImageJobRequest {
  /** Set for `stream: true`: the answer is a `text/event-stream` of OpenAI's image events. */
  stream: StreamRequest | undefined;
  /**
   * `partial_images` on an async submit: previews wanted on the job's event stream (GET …/events), 0–3.
   * Always 0 on the sync endpoints, where partial images go into the `stream: true` answer instead.
   */
  eventPartialImages: number;
  /** `webhook_url` as sent, where the job's end is to be announced; its address is checked by the submit (webhooks/). */
  webhookUrl: string | undefined;
}

const MAX_SEED = 2 ** 32 - 1;

/** Multipart sends everything as text; the SDK sends numbers and booleans as strings in JSON too. */
const intField = (min: number, max: number) =>
  z.preprocess((v) => (typeof v === 'string' && /^-?\d+$/.test(v.trim()) ? Number(v.trim()) : v), z.number().int().min(min).max(max));
const numberField = (min: number, max: number) =>
  z.preprocess((v) => (typeof v === 'string' && v.trim() !== '' && !Number.isNaN(Number(v)) ? Number(v) : v), z.number().min(min).max(max));
const boolField = z.preprocess((v) => (v === 'true' ? true : v === 'false' ? false : v), z.boolean());

const fieldsSchema = z.object({
  prompt: z.string({ error: 'prompt is required and must be a string' }).min(1, 'prompt must not be empty'),
  model: z.string().min(1).optional(),
  n: intField(1, 10).optional(),
  size: z.string().optional(),
  quality: z.enum(['low', 'medium', 'high', 'auto', 'standard', 'hd']).optional(),
  response_format: z.enum(['b64_json', 'url']).optional(),
  output_format: z.enum(['png', 'jpeg', 'webp']).optional(),
  output_compression: intField(0, 100).optional(),
  background: z.enum(['transparent', 'opaque', 'auto']).optional(),
  moderation: z.enum(['low', 'auto']).optional(),
  input_fidelity: z.enum(['high', 'low']).optional(),
  stream: boolField.optional(),
  partial_images: intField(0, 3).optional(),
  user: z.string().max(256).optional(),
  style: z.enum(['vivid', 'natural']).optional(),
  seed: intField(0, MAX_SEED).optional(),
  negative_prompt: z.string().max(32_000).optional(),
  num_inference_steps: intField(1, 1000).optional(),
  guidance_scale: numberField(0, 100).optional(),
  webhook_url: z.string({ error: 'webhook_url must be a string (an https URL)' }).optional(),
});

type Fields = z.infer<typeof fieldsSchema>;
const EXTENSION_FIELDS = ['seed', 'negative_prompt', 'num_inference_steps', 'guidance_scale'] as const;

interface RawImage {
  param: string;
  tmpPath: string;
}

export async function parseImageRequest(kind: JobKind, body: RequestBody, ctx: ImageRequestContext): Promise<ParsedImageRequest> {
  const rawImages: RawImage[] = [];
  let rawMask: RawImage | undefined;
  const temps: string[] = [];
  try {
    let rawFields: Record<string, unknown>;
    if (body.kind === 'multipart') {
      temps.push(...body.files.map((f) => f.path));
      rawFields = flattenMultipartFields(body.fields);
      for (const file of body.files) {
        if (file.field === 'image' || file.field === 'image[]') {
          rawImages.push({ param: `image[${rawImages.length}]`, tmpPath: file.path });
        } else if (file.field === 'mask' || file.field === 'mask[]') {
          if (rawMask !== undefined) throw new PixeldError('invalid_mask', 'send at most one mask', { param: 'mask' });
          rawMask = { param: 'mask', tmpPath: file.path };
        } else {
          throw new PixeldError('invalid_request', `unexpected file field "${file.field}"; images go in image or image[], the mask in mask`, {
            param: file.field,
          });
        }
      }
      for (const key of ['image', 'image[]', 'mask', 'mask[]']) {
        if (key in body.fields) throw new PixeldError('invalid_request', `${key} must be sent as a file part`, { param: key });
      }
    } else {
      if (body.value === null || typeof body.value !== 'object' || Array.isArray(body.value)) {
        throw new PixeldError('invalid_request', 'the JSON body must be an object');
      }
      rawFields = body.value as Record<string, unknown>;
      if (kind === 'edit') {
        const decoded = await decodeJsonImages(rawFields, ctx);
        temps.push(...decoded.images.map((i) => i.tmpPath));
        if (decoded.mask) temps.push(decoded.mask.tmpPath);
        rawImages.push(...decoded.images);
        rawMask = decoded.mask;
      }
    }

    const fields = parseFields(rawFields);
    const model = ctx.catalog.resolve(fields.model, kind);
    if (fields.prompt.length > ctx.limits.maxPromptChars) {
      throw new PixeldError('prompt_too_long', `prompt is ${fields.prompt.length} characters; the limit is ${ctx.limits.maxPromptChars}`, {
        param: 'prompt',
      });
    }
    for (const ext of EXTENSION_FIELDS) {
      if (fields[ext] !== undefined && !model.extensions.includes(ext)) {
        throw new PixeldError('unsupported_parameter', `model '${model.id}' does not accept ${ext}`, { param: ext });
      }
    }
    const n = fields.n ?? 1;
    if (n > model.maxN) {
      throw new PixeldError('invalid_n', `n is ${n}; model '${model.id}' makes at most ${model.maxN} images per request`, { param: 'n' });
    }
    const stream = streamRequestOf(fields, n, ctx);
    const outputFormat = fields.output_format ?? 'png';
    const background = fields.background ?? 'auto';
    if (background === 'transparent' && outputFormat === 'jpeg') {
      throw new PixeldError('invalid_request', 'a transparent background needs output_format png or webp', { param: 'background' });
    }

    if (kind === 'edit' && rawImages.length === 0) {
      throw new PixeldError('invalid_request', 'an edit needs at least one image (image or image[])', { param: 'image' });
    }
    if (kind === 'generation' && (rawImages.length > 0 || rawMask !== undefined)) {
      throw new PixeldError('invalid_request', 'images are only accepted by /v1/images/edits', { param: 'image' });
    }
    if (rawImages.length > ctx.limits.maxInputImages) {
      throw new PixeldError('too_many_images', `${rawImages.length} images sent; the limit is ${ctx.limits.maxInputImages}`, {
        param: 'image',
      });
    }

    const images: PreparedInput[] = [];
    for (const raw of rawImages) images.push(await prepareInput(raw, ctx));
    const mask = rawMask ? await prepareInput(rawMask, ctx) : undefined;
    if (mask) checkMask(mask.info, images[0]!.info, 'mask');

    const size = resolveSize(fields.size, model, ctx, images[0]?.info);
    const params: JobParams = {
      prompt: fields.prompt,
      n,
      size,
      quality: resolveQuality(fields.quality, model),
      responseFormat: fields.response_format ?? 'b64_json',
      outputFormat,
      outputCompression: outputFormat === 'png' ? undefined : fields.output_compression,
      background,
      seed: fields.seed ?? randomInt(0, 2 ** 31),
      negativePrompt: fields.negative_prompt,
      numInferenceSteps: fields.num_inference_steps,
      guidanceScale: fields.guidance_scale,
      user: fields.user,
    };
    const fingerprint = fingerprintOf(kind, rawFields, images, mask);
    const eventPartialImages = ctx.asyncSubmit === true ? (fields.partial_images ?? 0) : 0;
    return { kind, model, params, images, mask, requestSha256: body.sha256, fingerprint, stream, eventPartialImages, webhookUrl: fields.webhook_url };
  } catch (err) {
    await Promise.all(temps.map(removeQuietly));
    throw err;
  }
}

/**
 * OpenAI's stream events carry one image each and no image index, so a stream is of one image (n = 1), sent
 * as base64. partial_images means nothing in a sync answer without a stream: asking for previews there is a
 * mistake to say (an async submit sends them to the job's event stream).
 */
function streamRequestOf(fields: Fields, n: number, ctx: ImageRequestContext): StreamRequest | undefined {
  const partialImages = fields.partial_images ?? 0;
  if (fields.stream !== true) {
    if (partialImages > 0 && ctx.asyncSubmit !== true) {
      throw new PixeldError('invalid_request', 'partial_images is only sent in a stream; add "stream": true, submit the job async and read its events, or leave it out', {
        param: 'partial_images',
      });
    }
    return undefined;
  }
  if (ctx.asyncSubmit === true) {
    throw new PixeldError('unsupported_parameter', 'stream is for the sync endpoints; an async submit answers at once and is polled', {
      param: 'stream',
    });
  }
  if (n > 1) {
    throw new PixeldError('invalid_n', `n is ${n}; a stream carries one image, so stream: true needs n = 1`, { param: 'n' });
  }
  if (fields.response_format === 'url') {
    throw new PixeldError('invalid_request', 'a stream carries the image as b64_json; leave response_format out or set it to b64_json', {
      param: 'response_format',
    });
  }
  return { partialImages };
}

function parseFields(raw: Record<string, unknown>): Fields {
  const parsed = fieldsSchema.safeParse(raw);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  const param = issue.path.map(String).join('.') || null;
  const message = param && !issue.message.includes(param) ? `${param}: ${issue.message}` : issue.message;
  // A bad n is invalid_n whether it is out of 1–10 or above the model's maxN, so clients can tell one code.
  throw new PixeldError(param === 'n' ? 'invalid_n' : 'invalid_request', message, { param });
}

/** multer gives repeated text fields as arrays; the image fields are scalars, so the last value wins. */
function flattenMultipartFields(fields: Record<string, string | string[]>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fields)) {
    out[key.endsWith('[]') ? key.slice(0, -2) : key] = Array.isArray(value) ? value[value.length - 1] : value;
  }
  return out;
}

async function prepareInput(raw: RawImage, ctx: ImageRequestContext): Promise<PreparedInput> {
  const info = await inspectInputImage(raw.tmpPath, { maxInputPixels: ctx.limits.maxInputPixels }, raw.param);
  const sha256 = await sha256OfFile(raw.tmpPath);
  const { size } = await stat(raw.tmpPath);
  return { tmpPath: raw.tmpPath, sha256, bytes: size, info };
}

const DATA_URL = /^data:([a-z]+\/[a-z0-9.+-]+)?(;[a-z0-9-]+=[^;,]*)*;base64,/i;

async function decodeJsonImages(
  fields: Record<string, unknown>,
  ctx: ImageRequestContext,
): Promise<{ images: RawImage[]; mask: RawImage | undefined }> {
  const list = fields.images ?? fields.image;
  const entries = list === undefined ? [] : Array.isArray(list) ? list : [list];
  if (entries.length > ctx.limits.maxInputImages) {
    throw new PixeldError('too_many_images', `${entries.length} images sent; the limit is ${ctx.limits.maxInputImages}`, { param: 'images' });
  }
  const images: RawImage[] = [];
  try {
    for (const [i, entry] of entries.entries()) images.push(await decodeImageRef(entry, `images[${i}]`, ctx));
    const mask = fields.mask === undefined || fields.mask === null ? undefined : await decodeImageRef(fields.mask, 'mask', ctx);
    return { images, mask };
  } catch (err) {
    await Promise.all(images.map((i) => removeQuietly(i.tmpPath)));
    throw err;
  }
}

async function decodeImageRef(entry: unknown, param: string, ctx: ImageRequestContext): Promise<RawImage> {
  const url = typeof entry === 'string' ? entry : (entry as { image_url?: unknown } | null)?.image_url;
  if (entry !== null && typeof entry === 'object' && 'file_id' in entry) {
    throw new PixeldError('unsupported_parameter', `${param}.file_id is not supported here; send the image as a data: URL`, { param });
  }
  if (typeof url !== 'string') {
    throw new PixeldError('invalid_request', `${param} must be {"image_url": "data:image/png;base64,…"}`, { param });
  }
  const bytes = await imageUrlBytes(url, param, ctx);
  if (bytes.length === 0) throw new PixeldError('invalid_image', `${param} is empty`, { param });
  const tmpPath = ctx.tmpPath();
  try {
    await writeFile(tmpPath, bytes);
  } catch (err) {
    await removeQuietly(tmpPath);
    throw storageError(err);
  }
  return { param, tmpPath };
}

async function imageUrlBytes(url: string, param: string, ctx: ImageRequestContext): Promise<Buffer> {
  const match = DATA_URL.exec(url.slice(0, 256));
  if (match) {
    const bytes = Buffer.from(url.slice(match[0].length), 'base64');
    if (bytes.length > ctx.limits.maxInputImageBytes) {
      throw new PixeldError('payload_too_large', `${param} is larger than ${ctx.limits.maxInputImageBytes} bytes`, { param });
    }
    return bytes;
  }
  if (!ctx.limits.fetchRemoteImages) {
    throw new PixeldError('invalid_image', `${param}.image_url must be a base64 data: URL; remote URLs are not fetched`, { param });
  }
  return fetchRemoteImage(ctx.remoteImages ?? SYSTEM_REMOTE_IMAGE_DEPS, {
    url,
    param,
    maxBytes: ctx.limits.maxInputImageBytes,
    timeoutMs: ctx.limits.remoteImageTimeoutMs,
    maxRedirects: ctx.limits.remoteImageMaxRedirects,
    signal: ctx.signal,
  });
}

function resolveSize(requested: string | undefined, model: ModelConfig, ctx: ImageRequestContext, first: InputImageInfo | undefined): ImageSize {
  if (requested === undefined || requested === 'auto') {
    if (first === undefined) return ctx.catalog.defaultSize(model) as ImageSize;
    // For edits, `auto` keeps the input's shape: the allowed size nearest its aspect ratio.
    const ratio = first.width / first.height;
    const distance = (s: string) => {
      const [w, h] = s.split('x').map(Number) as [number, number];
      return Math.abs(Math.log(w / h / ratio));
    };
    const best = [...model.sizes].sort((a, b) => distance(a) - distance(b))[0]!;
    const fallback = ctx.catalog.defaultSize(model);
    return (distance(fallback) <= distance(best) ? fallback : best) as ImageSize;
  }
  if (!model.sizes.includes(requested)) {
    throw new PixeldError('invalid_size', `size '${requested}' is not supported by model '${model.id}'; use one of ${model.sizes.join(', ')} or auto`, {
      param: 'size',
    });
  }
  return requested as ImageSize;
}

function resolveQuality(requested: Fields['quality'], model: ModelConfig): JobParams['quality'] {
  switch (requested) {
    case 'low':
    case 'medium':
    case 'high':
      return requested;
    case 'standard':
      return 'medium';
    case 'hd':
      return 'high';
    default:
      return model.defaultQuality;
  }
}

function fingerprintOf(kind: JobKind, fields: Record<string, unknown>, images: PreparedInput[], mask: PreparedInput | undefined): string {
  const scalar: Record<string, unknown> = {};
  for (const key of Object.keys(fields).sort()) {
    if (key === 'images' || key === 'image' || key === 'mask') continue;
    scalar[key] = fingerprintText(key, fields[key]);
  }
  const canonical = JSON.stringify({ kind, fields: scalar, images: images.map((i) => i.sha256), mask: mask?.sha256 ?? null });
  return createHash('sha256').update(canonical).digest('hex');
}

/**
 * A field's value as text for the fingerprint. Ignored fields may hold anything JSON or bracketed multipart
 * names (`a[b]`, parsed into null-prototype objects) can express: String() throws on those and recurses on
 * deep arrays, so nested values are written as JSON, and one too deep even for that is refused.
 */
function fingerprintText(key: string, value: unknown): string {
  if (value === null || typeof value !== 'object') return String(value);
  try {
    return JSON.stringify(value);
  } catch {
    throw new PixeldError('invalid_request', `${key} is nested too deeply`, { param: key });
  }
}
