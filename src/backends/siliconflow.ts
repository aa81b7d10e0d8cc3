/**
 * Adapter for SiliconFlow-style hosted image APIs (SiliconCloud and look-alikes): one JSON endpoint,
 * `POST {baseUrl}/images/generations`, serves text-to-image and edits alike; edit inputs travel inside the
 * JSON as data URLs in `image`, `image2`, `image3`. Results come back as URLs that expire after an hour, so
 * every one is downloaded as soon as the answer arrives.
 *
 * What the API cannot do, and what the adapter does about it (each reported as a warning):
 * - no mask parameter: the mask is not sent and the edit applies to the whole image;
 * - at most three input images: only the first three are sent;
 * - one base seed per request: images of a batch cannot have the seed + i the runner expects, which is
 *   why `maxImagesPerCall` defaults to 1 for this backend type (the runner then gives each call its seed);
 * - no transparent backgrounds.
 *
 * Content-safety blocks: SiliconFlow publishes no dedicated error code for them (its error page lists HTTP
 * statuses only, with `{"code","message","data":null}` bodies such as code 20012 "Model does not exist").
 * A 4xx whose message speaks of sensitive, unsafe, NSFW or policy-violating content is therefore read as a
 * moderation block; every other 4xx is a rejection.
 */
import { readFile } from 'node:fs/promises';
import { Agent, request } from 'undici';
import type { Dispatcher } from 'undici';
import type { SiliconFlowBackendConfig } from '../config/schema.js';
import type { Logger } from '../obs/logger.js';
import { BackendError, sanitizeUpstreamMessage, type BackendFailureKind } from './errors.js';
import { agentOptions, joinUrl, parseRetryAfterMs, redactUrl, requestTimeouts, type RequestTimeouts } from './openai.js';
import type { BackendCallOptions, BackendCallResult, BackendWarning, ImageBackend, InputImage } from './types.js';
import { PROGRAMMING_ERROR_CODES, closeAgent, errorCode, firstHeader, isRecord } from './upstream.js';

/** The response header SiliconFlow identifies a request by; support asks for it. */
export const TRACE_ID_HEADER = 'x-siliconcloud-trace-id';
/** Input images one request can carry (`image`, `image2`, `image3`). */
export const MAX_INPUT_IMAGES = 3;
const IMAGE_FIELDS = ['image', 'image2', 'image3'] as const;

/** The answer lists URLs only; anything near this size is not a SiliconFlow answer. */
const MAX_RESPONSE_BYTES = 1024 * 1024;
/** Bytes of an error body read to find the message. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;
/** Result downloads answered with these statuses mean the short-lived URL is no longer valid. */
const EXPIRED_URL_STATUSES = new Set([403, 404, 410]);

export interface SiliconFlowBackendDeps {
  logger: Logger;
  /** Clock in epoch ms. @default Date.now */
  now?: () => number;
}

/** JSON body of `POST /images/generations`; optional keys are absent rather than undefined. */
export interface SiliconFlowBody {
  model: string;
  prompt: string;
  negative_prompt?: string;
  image_size: string;
  batch_size: number;
  seed: number;
  num_inference_steps?: number;
  guidance_scale?: number;
  image?: string;
  image2?: string;
  image3?: string;
}

/** Which inputs a call sends, and what it has to warn about; decided before any file is read. */
export interface SiliconFlowCallPlan {
  /** At most MAX_INPUT_IMAGES, in the caller's order. */
  inputs: InputImage[];
  warnings: BackendWarning[];
}

export function planSiliconFlowCall(options: BackendCallOptions): SiliconFlowCallPlan {
  const warnings: BackendWarning[] = [];
  const images = options.images ?? [];
  if (options.mask !== undefined) {
    warnings.push({
      type: 'unsupported',
      feature: 'mask',
      message: 'this backend has no mask parameter; the mask was not sent and the edit may change the whole image',
    });
  }
  if (images.length > MAX_INPUT_IMAGES) {
    warnings.push({
      type: 'unsupported',
      feature: 'image',
      message: `this backend takes at most ${MAX_INPUT_IMAGES} input images; sent the first ${MAX_INPUT_IMAGES} of ${images.length}`,
    });
  }
  if (options.n > 1) {
    warnings.push({
      type: 'unsupported',
      feature: 'seed',
      message: `${options.n} images were made in one batch from base seed ${options.seed}; their individual seeds are not known`,
    });
  }
  if (options.background === 'transparent') {
    warnings.push({
      type: 'unsupported',
      feature: 'background',
      message: 'this backend makes opaque images; a transparent background was not possible',
    });
  }
  return { inputs: images.slice(0, MAX_INPUT_IMAGES), warnings };
}

/**
 * Maps call options to the request body. Steps and guidance fall back to the configured defaults when the
 * caller gives none; when neither is set the key is left out so the model's own default applies.
 */
export function toSiliconFlowBody(
  options: BackendCallOptions,
  config: Pick<SiliconFlowBackendConfig, 'numInferenceSteps' | 'guidanceScale'>,
  imageDataUrls: readonly string[],
): SiliconFlowBody {
  const body: SiliconFlowBody = {
    model: options.model,
    prompt: options.prompt,
    image_size: options.size,
    batch_size: options.n,
    seed: options.seed,
  };
  if (options.negativePrompt !== undefined) body.negative_prompt = options.negativePrompt;
  const steps = options.numInferenceSteps ?? config.numInferenceSteps;
  if (steps !== undefined) body.num_inference_steps = steps;
  const guidance = options.guidanceScale ?? config.guidanceScale;
  if (guidance !== undefined) body.guidance_scale = guidance;
  imageDataUrls.slice(0, MAX_INPUT_IMAGES).forEach((url, i) => {
    body[IMAGE_FIELDS[i]!] = url;
  });
  return body;
}

export function toDataUrl(bytes: Uint8Array, mediaType: string): string {
  return `data:${mediaType};base64,${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64')}`;
}

export interface SiliconFlowErrorInfo {
  message: string | undefined;
  /** The body's `code` (20012 and the like), as text. */
  code: string | undefined;
}

/**
 * Reads `{"code":20012,"message":"…","data":null}`; also the OpenAI shape and plain text, which gateways in
 * front of the API answer with.
 */
export function extractSiliconFlowError(text: string): SiliconFlowErrorInfo {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { message: text.trim() === '' ? undefined : text, code: undefined };
  }
  if (!isRecord(parsed)) return { message: typeof parsed === 'string' ? parsed : undefined, code: undefined };
  const codeOf = (v: unknown) => (typeof v === 'string' || typeof v === 'number' ? String(v) : undefined);
  if (typeof parsed.message === 'string') return { message: parsed.message, code: codeOf(parsed.code) };
  if (isRecord(parsed.error) && typeof parsed.error.message === 'string') {
    return { message: parsed.error.message, code: codeOf(parsed.error.code) ?? codeOf(parsed.code) };
  }
  if (typeof parsed.error === 'string') return { message: parsed.error, code: codeOf(parsed.code) };
  if (typeof parsed.detail === 'string') return { message: parsed.detail, code: codeOf(parsed.code) };
  return { message: undefined, code: codeOf(parsed.code) };
}

const MODERATION_MESSAGE =
  /sensitive|unsafe|nsfw|moderation|inappropriate|prohibited content|content[ _-]?(?:policy|safety|security)|violat\w* (?:our |the )?(?:usage |content )?polic|敏感|违规|违禁|不安全|安全审核/i;

/** Whether a 4xx is a content-safety block; see the module comment for why this reads the message. */
export function isSiliconFlowModeration(info: SiliconFlowErrorInfo): boolean {
  return (info.message !== undefined && MODERATION_MESSAGE.test(info.message)) || (info.code !== undefined && MODERATION_MESSAGE.test(info.code));
}

export function createSiliconFlowBackend(config: SiliconFlowBackendConfig, deps: SiliconFlowBackendDeps): ImageBackend {
  const now = deps.now ?? Date.now;
  const logger = deps.logger;
  const agent = new Agent(agentOptions(config));
  const baseOrigin = new URL(config.baseUrl).origin;

  const apiKey = config.apiKey ?? (config.apiKeyEnv !== undefined ? process.env[config.apiKeyEnv] : undefined);
  if (!apiKey) {
    // The hosted API refuses every call without a key; say so once at start rather than on each 401.
    logger.warn('siliconflow backend has no api key; calls will be refused', {
      backendId: config.id,
      ...(config.apiKeyEnv !== undefined ? { apiKeyEnv: config.apiKeyEnv } : {}),
    });
  }

  function headersFor(url: URL, extra: Record<string, string> = {}): Record<string, string> {
    const headers: Record<string, string> = { accept: 'application/json', ...extra };
    // Result URLs live on object storage; the key is only for the API itself.
    if (apiKey && url.origin === baseOrigin) headers.authorization = `Bearer ${apiKey}`;
    return headers;
  }

  function fail(kind: BackendFailureKind, message: string, ctx: FailureContext): never {
    const details = [...(ctx.status !== undefined ? [`Status: ${ctx.status}`] : []), `URL: ${redactUrl(ctx.url)}`];
    if (ctx.code !== undefined) details.push(`Code: ${ctx.code}`);
    if (ctx.traceId !== undefined) details.push(`Trace-Id: ${ctx.traceId}`);
    throw new BackendError(config.id, kind, message, {
      status: ctx.status,
      retryAfterMs: ctx.retryAfterMs,
      details,
      cause: ctx.cause,
    });
  }

  function failTransport(err: unknown, signal: AbortSignal, ctx: FailureContext, phase: 'call' | 'download'): never {
    if (signal.aborted) throw signal.reason;
    const code = errorCode(err);
    if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
      fail('timeout', 'backend did not answer before the job deadline', { ...ctx, cause: err });
    }
    if (err instanceof TypeError || (code !== undefined && PROGRAMMING_ERROR_CODES.has(code))) throw err;
    const reason = err instanceof Error ? err.message : String(err);
    if (phase === 'download') fail('bad_response', `could not download a result image: ${reason}`, { ...ctx, cause: err });
    fail('unavailable', `backend unreachable: ${code !== undefined ? `${code} ` : ''}${reason}`, { ...ctx, cause: err });
  }

  async function send(
    url: URL,
    init: { method: 'GET' | 'POST'; body?: string; headers?: Record<string, string> },
    signal: AbortSignal,
    timeouts: RequestTimeouts | undefined,
    phase: 'call' | 'download',
  ): Promise<Dispatcher.ResponseData> {
    try {
      return await request(url, {
        dispatcher: agent,
        method: init.method,
        headers: headersFor(url, init.headers),
        body: init.body,
        signal,
        ...(timeouts ?? {}),
      });
    } catch (err) {
      failTransport(err, signal, { url }, phase);
    }
  }

  async function readBody(
    res: Dispatcher.ResponseData,
    limit: number,
    signal: AbortSignal,
    ctx: FailureContext,
    phase: 'call' | 'download',
  ): Promise<{ bytes: Buffer; overflow: boolean }> {
    const chunks: Buffer[] = [];
    let total = 0;
    try {
      for await (const chunk of res.body) {
        const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
        total += buf.length;
        if (total > limit) {
          res.body.destroy();
          return { bytes: Buffer.concat(chunks), overflow: true };
        }
        chunks.push(buf);
      }
    } catch (err) {
      failTransport(err, signal, ctx, phase);
    }
    return { bytes: Buffer.concat(chunks), overflow: false };
  }

  async function failStatus(res: Dispatcher.ResponseData, signal: AbortSignal, url: URL, traceId: string | undefined): Promise<never> {
    const status = res.statusCode;
    const { bytes } = await readBody(res, MAX_ERROR_BODY_BYTES, signal, { url, status, traceId }, 'call');
    const info = extractSiliconFlowError(bytes.toString('utf8'));
    const upstream = sanitizeUpstreamMessage(info.message ?? `HTTP ${status}`);
    const code = info.code !== undefined ? sanitizeUpstreamMessage(info.code) : undefined;
    const ctx: FailureContext = { url, status, traceId, code };
    logger.warn('siliconflow call failed', { backendId: config.id, status, code, traceId, upstreamMessage: upstream });
    if (status === 429 || status >= 500) {
      ctx.retryAfterMs = parseRetryAfterMs(res.headers, now());
      fail('unavailable', `backend unavailable (HTTP ${status}): ${upstream}`, ctx);
    }
    const withCode = code !== undefined ? `${upstream} (code ${code})` : upstream;
    if (status >= 400) fail(isSiliconFlowModeration(info) ? 'moderation' : 'rejected', withCode, ctx);
    // undici does not follow redirects; one here means baseUrl points at the wrong place.
    fail('bad_response', `backend answered HTTP ${status}`, ctx);
  }

  async function download(
    entryUrl: string,
    index: number,
    signal: AbortSignal,
    deadlineMs: number,
    answeredMs: number,
    traceId: string | undefined,
  ): Promise<Uint8Array> {
    let url: URL;
    try {
      url = new URL(entryUrl);
    } catch {
      fail('bad_response', `images[${index}].url is not a valid URL`, { url: config.baseUrl, traceId });
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      fail('bad_response', `images[${index}].url has unsupported scheme ${url.protocol}`, { url, traceId });
    }
    const timeouts = requestTimeouts(deadlineMs, now());
    if (timeouts === undefined) fail('timeout', 'job deadline passed before the result was downloaded', { url, traceId });
    const res = await send(url, { method: 'GET', headers: { accept: '*/*' } }, signal, timeouts, 'download');
    const ctx: FailureContext = { url, status: res.statusCode, traceId };
    if (res.statusCode < 200 || res.statusCode >= 300) {
      res.body.destroy();
      if (EXPIRED_URL_STATUSES.has(res.statusCode)) {
        fail(
          'bad_response',
          `result image URL answered HTTP ${res.statusCode} ${now() - answeredMs} ms after the backend gave it: expired or withdrawn`,
          ctx,
        );
      }
      fail('bad_response', `result image download failed with HTTP ${res.statusCode}`, ctx);
    }
    const declared = Number(firstHeader(res.headers['content-length']));
    if (Number.isFinite(declared) && declared > config.maxDownloadBytes) {
      res.body.destroy();
      fail('bad_response', `result image is ${declared} bytes, over maxDownloadBytes ${config.maxDownloadBytes}`, ctx);
    }
    const { bytes, overflow } = await readBody(res, config.maxDownloadBytes, signal, ctx, 'download');
    if (overflow) fail('bad_response', `result image is over maxDownloadBytes ${config.maxDownloadBytes}`, ctx);
    if (bytes.length === 0) fail('bad_response', 'result image download was empty', ctx);
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
  }

  async function generate(options: BackendCallOptions): Promise<BackendCallResult> {
    const { signal } = options;
    signal.throwIfAborted();
    const url = new URL(joinUrl(config.baseUrl, '/images/generations'));
    const startedMs = now();

    const plan = planSiliconFlowCall(options);
    const warnings = [...plan.warnings];
    const dataUrls: string[] = [];
    try {
      for (const input of plan.inputs) dataUrls.push(toDataUrl(await readFile(input.path, { signal }), input.mediaType));
    } catch (err) {
      // readFile rejects with its own AbortError; the runner tells cancel from deadline by the reason it gave.
      if (signal.aborted) throw signal.reason;
      throw err;
    }
    const body = JSON.stringify(toSiliconFlowBody(options, config, dataUrls));
    signal.throwIfAborted();

    const timeouts = requestTimeouts(options.deadlineMs, now());
    if (timeouts === undefined) fail('timeout', 'job deadline passed before the backend call', { url });

    const res = await send(url, { method: 'POST', body, headers: { 'content-type': 'application/json' } }, signal, timeouts, 'call');
    const answeredMs = now();
    const traceId = firstHeader(res.headers[TRACE_ID_HEADER]);
    if (res.statusCode < 200 || res.statusCode >= 300) await failStatus(res, signal, url, traceId);

    const ctx: FailureContext = { url, status: res.statusCode, traceId };
    const { bytes, overflow } = await readBody(res, MAX_RESPONSE_BYTES, signal, ctx, 'call');
    if (overflow) fail('bad_response', `backend response is over ${MAX_RESPONSE_BYTES} bytes`, ctx);
    let parsed: unknown;
    try {
      parsed = JSON.parse(bytes.toString('utf8'));
    } catch {
      fail('bad_response', 'backend response is not valid JSON', ctx);
    }
    const answer = isRecord(parsed) ? parsed : {};
    const images = answer.images;
    if (!Array.isArray(images) || images.length === 0) {
      const said = extractSiliconFlowError(bytes.toString('utf8')).message;
      fail('bad_response', `backend answered 200 without images${said !== undefined ? `: ${sanitizeUpstreamMessage(said)}` : ''}`, ctx);
    }
    let entries: unknown[] = images;
    if (entries.length > options.n) {
      warnings.push({ type: 'other', message: `backend returned ${entries.length} images for n=${options.n}; kept the first ${options.n}` });
      entries = entries.slice(0, options.n);
    }
    const urls = entries.map((entry, i) => {
      const u = isRecord(entry) ? entry.url : undefined;
      if (typeof u !== 'string' || u === '') fail('bad_response', `images[${i}] has no url`, ctx);
      return u;
    });
    const usedSeed = answer.seed;
    if (typeof usedSeed === 'number' && usedSeed !== options.seed) {
      warnings.push({
        type: 'unsupported',
        feature: 'seed',
        message: `backend used seed ${usedSeed} instead of the requested ${options.seed}`,
      });
    }

    // The URLs expire: fetch them all now, together. The first failure stops the rest.
    const downloads = new AbortController();
    const downloadSignal = AbortSignal.any([signal, downloads.signal]);
    let results: Uint8Array[];
    try {
      results = await Promise.all(
        urls.map((u, i) => download(u, i, downloadSignal, options.deadlineMs, answeredMs, traceId)),
      );
    } catch (err) {
      downloads.abort();
      if (signal.aborted) throw signal.reason;
      throw err;
    }

    const timings = isRecord(answer.timings) ? answer.timings : {};
    logger.info('siliconflow call answered', {
      backendId: config.id,
      traceId,
      model: options.model,
      seed: typeof usedSeed === 'number' ? usedSeed : options.seed,
      images: results.length,
      inferenceS: typeof timings.inference === 'number' ? timings.inference : undefined,
      ms: now() - startedMs,
      ...(warnings.length > 0 ? { warnings: warnings.map((w) => (w.feature ? `${w.feature}: ${w.message}` : w.message)) } : {}),
    });

    return {
      images: results,
      warnings,
      response: {
        timestampMs: now(),
        modelId: options.model,
        ...(traceId !== undefined ? { headers: { [TRACE_ID_HEADER]: traceId } } : {}),
      },
    };
  }

  async function checkHealth(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const url = new URL(joinUrl(config.baseUrl, config.healthPath));
    const res = await send(url, { method: 'GET' }, signal, undefined, 'call');
    await res.body.dump().catch(() => undefined);
    if (res.statusCode < 200 || res.statusCode >= 300) {
      fail('unavailable', `health check answered HTTP ${res.statusCode}`, {
        url,
        status: res.statusCode,
        traceId: firstHeader(res.headers[TRACE_ID_HEADER]),
        retryAfterMs: parseRetryAfterMs(res.headers, now()),
      });
    }
  }

  async function close(): Promise<void> {
    await closeAgent(agent);
  }

  return {
    id: config.id,
    type: 'siliconflow',
    maxImagesPerCall: config.maxImagesPerCall,
    rerunInterruptedJobs: config.rerunInterruptedJobs,
    generate,
    checkHealth,
    close,
  };
}

interface FailureContext {
  url: URL | string;
  status?: number;
  retryAfterMs?: number;
  traceId?: string;
  code?: string;
  cause?: unknown;
}




