/**
 * Adapter for OpenAI-compatible image servers: SGLang diffusion, vLLM-Omni, LocalAI and OpenAI itself.
 * One `generate` is one upstream call (`/images/generations`, or the edit route: `/images/edits`, LocalAI's
 * `/images/inpainting`); results given as URLs are downloaded at once because backends expire them. How
 * each server differs is its flavor's habits (openai-flavors.ts); whatever a server cannot honour is
 * reported as a warning. The request mapping is kept in pure exported functions so it can be tested
 * without sockets.
 */
import { readFile } from 'node:fs/promises';
import { Agent, FormData, request } from 'undici';
import type { Dispatcher } from 'undici';
import type { OpenAIBackendConfig } from '../config/schema.js';
import { toWhiteInpaintMask, wholeImageWhiteMask } from '../images/masks.js';
import type { Logger } from '../obs/logger.js';
import { BackendError, sanitizeUpstreamMessage } from './errors.js';
import { decodeBase64Image, parseJsonBody, RawJsonString } from './base64-json.js';
import { serverHabits, type OpenAIServerHabits } from './openai-flavors.js';
import type { BackendCallOptions, BackendCallResult, BackendWarning, ImageBackend } from './types.js';
import { PROGRAMMING_ERROR_CODES, closeAgent, errorCode, firstHeader, isRecord } from './upstream.js';

/** Bytes of an error body read to find the message; servers sometimes echo whole base64 inputs back. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;
/** Base64 inflates bytes by 4/3; JSON framing and extra fields get this much on top. */
const RESPONSE_OVERHEAD_BYTES = 1024 * 1024;
/** Node timers overflow (and fire at once) above this. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Response headers worth keeping in the job log: request and trace ids. */
const TRACE_HEADER = /(?:^|-)(?:request|trace)-id$/i;

export interface OpenAIBackendDeps {
  logger: Logger;
  /** Clock in epoch ms. @default Date.now */
  now?: () => number;
}

/** JSON body of `POST /images/generations`; only keys with a value are present. */
export type GenerationBody = Record<string, string | number>;

/**
 * Maps call options to the generations body. `response_format` is sent only when b64 is wanted: servers
 * that reject the field (OpenAI's GPT-image models) or only do URLs are configured with requestB64 false,
 * and the result parser accepts whichever shape comes back.
 */
export function toGenerationBody(
  options: BackendCallOptions,
  habits: Pick<OpenAIServerHabits, 'requestB64' | 'sendExtensions' | 'negativePrompt'>,
): GenerationBody {
  const extensions = habits.sendExtensions;
  const negative = extensions ? options.negativePrompt : undefined;
  const piped = habits.negativePrompt === 'prompt-pipe' && negative !== undefined;
  const candidate: Record<string, string | number | undefined> = {
    model: options.model,
    // LocalAI reads the negative prompt after a `|` in the prompt.
    prompt: piped ? `${options.prompt}|${negative}` : options.prompt,
    n: options.n,
    size: options.size,
    response_format: habits.requestB64 ? 'b64_json' : undefined,
    seed: extensions ? options.seed : undefined,
    negative_prompt: piped ? undefined : negative,
    num_inference_steps: extensions ? options.numInferenceSteps : undefined,
    guidance_scale: extensions ? options.guidanceScale : undefined,
    output_format: options.outputFormat,
    background: options.background,
    quality: options.quality,
  };
  const body: GenerationBody = {};
  for (const [key, value] of Object.entries(candidate)) {
    if (value !== undefined) body[key] = value;
  }
  return body;
}

export type EditPart =
  | { kind: 'field'; name: string; value: string }
  | {
      kind: 'file';
      name: string;
      path: string;
      filename: string;
      mediaType: string;
      /**
       * `white-inpaint-mask`: the file is an OpenAI alpha mask to convert before sending;
       * `whole-image-mask`: a white mask of the file's size is sent instead (edit everything).
       */
      transform: 'none' | 'white-inpaint-mask' | 'whole-image-mask';
    };

const EXTENSION_BY_MEDIA_TYPE: Record<string, string> = {
  'image/png': 'png',
  'image/jpeg': 'jpg',
  'image/webp': 'webp',
};

/**
 * Describes the multipart body of the edit route. Scalars travel as strings, as the OpenAI SDK sends them;
 * every input image goes under the configured field, repeated, even when there is one. LocalAI's
 * inpainting route takes one image and always a mask: without one, the whole image may change (what an
 * OpenAI edit without a mask means). A server that ignores masks is not sent one.
 */
export function toEditParts(options: BackendCallOptions, habits: OpenAIServerHabits): EditPart[] {
  const parts: EditPart[] = Object.entries(toGenerationBody(options, habits)).map(([name, value]) => ({
    kind: 'field',
    name,
    value: String(value),
  }));
  const inpainting = habits.editPath === '/images/inpainting';
  const images = inpainting ? (options.images ?? []).slice(0, 1) : (options.images ?? []);
  images.forEach((image, i) => {
    parts.push({
      kind: 'file',
      name: habits.editImageField,
      path: image.path,
      filename: `image-${i}.${EXTENSION_BY_MEDIA_TYPE[image.mediaType] ?? 'png'}`,
      mediaType: image.mediaType,
      transform: 'none',
    });
  });
  const mask = { kind: 'file' as const, name: habits.editMaskField, filename: 'mask.png', mediaType: 'image/png' };
  if (options.mask !== undefined && habits.maskConvention !== 'ignored') {
    parts.push({ ...mask, path: options.mask.path, transform: habits.maskConvention === 'white-inpaint' ? 'white-inpaint-mask' : 'none' });
  } else if (options.mask === undefined && inpainting && images[0] !== undefined) {
    parts.push({ ...mask, path: images[0].path, transform: 'whole-image-mask' });
  }
  return parts;
}

/** What this server cannot do of what the call asks, as warnings for the job (never a silent drop). */
export function unhonoured(options: BackendCallOptions, habits: OpenAIServerHabits, flavor: string): BackendWarning[] {
  const warnings: BackendWarning[] = [];
  if (!habits.sendExtensions) {
    const asked = { negative_prompt: options.negativePrompt, num_inference_steps: options.numInferenceSteps, guidance_scale: options.guidanceScale };
    for (const [feature, value] of Object.entries(asked)) {
      if (value !== undefined) warnings.push({ type: 'unsupported', feature, message: `the ${flavor} server takes no ${feature}; not sent` });
    }
  }
  if (options.mask !== undefined && habits.maskConvention === 'ignored') {
    warnings.push({ type: 'unsupported', feature: 'mask', message: `the ${flavor} server ignores masks; the whole image may have changed` });
  }
  if (habits.editPath === '/images/inpainting' && (options.images?.length ?? 0) > 1) {
    warnings.push({ type: 'unsupported', feature: 'image', message: `the ${flavor} server edits one image; the first was used, ${options.images!.length - 1} ignored` });
  }
  return warnings;
}

/** Reads the files an edit needs and assembles the form; the only I/O of the edit mapping. */
export async function buildEditForm(parts: EditPart[]): Promise<FormData> {
  const form = new FormData();
  for (const part of parts) {
    if (part.kind === 'field') {
      form.append(part.name, part.value);
      continue;
    }
    const raw = await readFile(part.path);
    const bytes =
      part.transform === 'white-inpaint-mask'
        ? await toWhiteInpaintMask(raw)
        : part.transform === 'whole-image-mask'
          ? await wholeImageWhiteMask(raw)
          : raw;
    form.append(part.name, new Blob([new Uint8Array(bytes)], { type: part.mediaType }), part.filename);
  }
  return form;
}

export interface RequestTimeouts {
  headersTimeout: number;
  bodyTimeout: number;
}

/**
 * undici's per-request timeouts, from the time left before the job deadline: its 300 s defaults would
 * cut a slow model short. Undefined when the deadline has passed — undici reads 0 as "no timeout", so a
 * spent deadline must never become 0.
 */
export function requestTimeouts(deadlineMs: number, nowMs: number): RequestTimeouts | undefined {
  const remaining = Math.ceil(deadlineMs - nowMs);
  if (!(remaining > 0)) return undefined;
  const ms = Math.min(remaining, MAX_TIMER_MS);
  return { headersTimeout: ms, bodyTimeout: ms };
}

/** Options of the undici Agent the adapter owns. */
export function agentOptions(config: Pick<OpenAIBackendConfig, 'connectTimeoutMs'>): Agent.Options {
  return { connect: { timeout: config.connectTimeoutMs } };
}

/** `base` (up to /v1, maybe with a trailing slash) joined with a path that may or may not start with /. */
export function joinUrl(base: string, path: string): string {
  return `${base.replace(/\/+$/, '')}/${path.replace(/^\/+/, '')}`;
}

/** A URL fit for logs and error details: no user info, no query (signed URLs carry tokens there). */
export function redactUrl(url: string | URL): string {
  try {
    const u = new URL(url);
    if (u.protocol === 'data:') return 'data:…';
    u.username = '';
    u.password = '';
    u.search = '';
    u.hash = '';
    return u.toString();
  } catch {
    return '[unparseable url]';
  }
}

/** Retry-After as seconds or HTTP date, or the `retry-after-ms` extension some OpenAI-style servers send. */
export function parseRetryAfterMs(
  headers: Record<string, string | string[] | undefined>,
  nowMs: number,
): number | undefined {
  const ms = firstHeader(headers['retry-after-ms']);
  if (ms !== undefined && /^\d+(?:\.\d+)?$/.test(ms.trim())) return Math.ceil(Number(ms));
  const value = firstHeader(headers['retry-after'])?.trim();
  if (value === undefined || value === '') return undefined;
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
}

export interface UpstreamErrorInfo {
  message: string | undefined;
  /** `code` and `type` joined, for telling moderation blocks apart. */
  codes: string[];
}

/**
 * Finds the message in the error shapes these servers use: FastAPI's `{"detail": string | [{msg}]}`
 * (SGLang), `{"error": {"message", "type", "code"}}` (OpenAI, vLLM, LocalAI), `{"error": "text"}` and
 * `{"message"}`. Falls back to the raw text when it is not JSON.
 */
export function extractUpstreamError(text: string): UpstreamErrorInfo {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { message: text.trim() === '' ? undefined : text, codes: [] };
  }
  if (!isRecord(parsed)) return { message: typeof parsed === 'string' ? parsed : undefined, codes: [] };
  const codes: string[] = [];
  const collectCodes = (o: Record<string, unknown>): void => {
    for (const key of ['code', 'type']) {
      const v = o[key];
      if (typeof v === 'string' || typeof v === 'number') codes.push(String(v));
    }
  };
  collectCodes(parsed);
  const { detail, error, message } = parsed;
  if (typeof detail === 'string') return { message: detail, codes };
  if (Array.isArray(detail)) {
    const msgs = detail.map((d) => (isRecord(d) ? describeValidationItem(d) : String(d))).filter((m) => m !== '');
    if (msgs.length > 0) return { message: msgs.join('; '), codes };
  }
  if (isRecord(error)) {
    collectCodes(error);
    if (typeof error.message === 'string') return { message: error.message, codes };
  }
  if (typeof error === 'string') return { message: error, codes };
  if (typeof message === 'string') return { message, codes };
  return { message: undefined, codes };
}

function describeValidationItem(item: Record<string, unknown>): string {
  const msg = typeof item.msg === 'string' ? item.msg : '';
  // FastAPI's loc starts with where the value was ("body"), which tells a caller nothing.
  const loc = Array.isArray(item.loc) ? item.loc.filter((p) => p !== 'body').join('.') : '';
  return loc !== '' && msg !== '' ? `${loc}: ${msg}` : msg;
}

const MODERATION_CODE = /moderation|safety|content[_ -]?policy/i;

export function isModerationBlock(info: UpstreamErrorInfo): boolean {
  return info.codes.some((c) => MODERATION_CODE.test(c));
}

export function createOpenAIBackend(config: OpenAIBackendConfig, deps: OpenAIBackendDeps): ImageBackend {
  const now = deps.now ?? Date.now;
  const habits = serverHabits(config);
  const logger = deps.logger;
  const agent = new Agent(agentOptions(config));
  const baseOrigin = new URL(config.baseUrl).origin;

  const apiKey = config.apiKey ?? (config.apiKeyEnv !== undefined ? process.env[config.apiKeyEnv] : undefined);
  if (config.apiKey === undefined && config.apiKeyEnv !== undefined && !apiKey) {
    logger.warn('backend api key env var is unset or empty; calling without a key', {
      backendId: config.id,
      apiKeyEnv: config.apiKeyEnv,
    });
  }

  function headersFor(url: URL, extra: Record<string, string> = {}): Record<string, string> {
    const headers: Record<string, string> = { accept: 'application/json', ...extra };
    // Result URLs may point at other hosts (object storage); the key is only for the backend itself.
    if (apiKey && url.origin === baseOrigin) headers.authorization = `Bearer ${apiKey}`;
    return headers;
  }

  function fail(kind: ConstructorParameters<typeof BackendError>[1], message: string, ctx: FailureContext): never {
    const details = [...(ctx.status !== undefined ? [`Status: ${ctx.status}`] : []), `URL: ${redactUrl(ctx.url)}`];
    if (ctx.requestId !== undefined) details.push(`Request-Id: ${ctx.requestId}`);
    throw new BackendError(config.id, kind, message, {
      status: ctx.status,
      retryAfterMs: ctx.retryAfterMs,
      details,
      cause: ctx.cause,
    });
  }

  /** Network-level failure of a request or of reading its body. Never returns. */
  function failTransport(err: unknown, signal: AbortSignal, url: URL, phase: 'call' | 'download'): never {
    if (signal.aborted) throw signal.reason;
    const code = errorCode(err);
    if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
      fail('timeout', 'backend did not answer before the job deadline', { url, cause: err });
    }
    if (err instanceof TypeError || (code !== undefined && PROGRAMMING_ERROR_CODES.has(code))) throw err;
    const reason = err instanceof Error ? err.message : String(err);
    if (phase === 'download') fail('bad_response', `could not download a result image: ${reason}`, { url, cause: err });
    fail('unavailable', `backend unreachable: ${code !== undefined ? `${code} ` : ''}${reason}`, { url, cause: err });
  }

  async function send(
    url: URL,
    init: { method: 'GET' | 'POST'; body?: string | FormData; headers?: Record<string, string> },
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
      failTransport(err, signal, url, phase);
    }
  }

  async function readBody(
    res: Dispatcher.ResponseData,
    limit: number,
    signal: AbortSignal,
    url: URL,
    phase: 'call' | 'download',
  ): Promise<{ bytes: Buffer; overflow: boolean }> {
    const chunks: Buffer[] = [];
    let total = 0;
    try {
      for await (const chunk of res.body) {
        const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
        total += buf.length;
        if (total > limit) {
          chunks.push(buf.subarray(0, buf.length - (total - limit)));
          res.body.destroy();
          return { bytes: Buffer.concat(chunks), overflow: true };
        }
        chunks.push(buf);
      }
    } catch (err) {
      failTransport(err, signal, url, phase);
    }
    return { bytes: Buffer.concat(chunks), overflow: false };
  }

  async function failStatus(res: Dispatcher.ResponseData, signal: AbortSignal, url: URL): Promise<never> {
    const { bytes } = await readBody(res, MAX_ERROR_BODY_BYTES, signal, url, 'call');
    const info = extractUpstreamError(bytes.toString('utf8'));
    const status = res.statusCode;
    const upstream = sanitizeUpstreamMessage(info.message ?? `HTTP ${status}`);
    const ctx: FailureContext = { url, status, requestId: traceId(res.headers) };
    if (status === 429 || status >= 500) {
      ctx.retryAfterMs = parseRetryAfterMs(res.headers, now());
      fail('unavailable', `backend unavailable (HTTP ${status}): ${upstream}`, ctx);
    }
    if (status >= 400) fail(isModerationBlock(info) ? 'moderation' : 'rejected', upstream, ctx);
    // undici does not follow redirects; one here means baseUrl points at the wrong place.
    const location = firstHeader(res.headers.location);
    const target = location ? ` (to ${redactUrl(URL.canParse(location, url) ? new URL(location, url) : location)})` : '';
    fail('bad_response', `backend answered HTTP ${status}${target}`, ctx);
  }

  async function download(entryUrl: string, signal: AbortSignal, deadlineMs: number): Promise<Uint8Array> {
    let url: URL;
    try {
      url = new URL(entryUrl, `${config.baseUrl.replace(/\/+$/, '')}/`);
    } catch {
      fail('bad_response', 'backend returned an invalid result URL', { url: config.baseUrl });
    }
    if (url.protocol === 'data:') return decodeDataUrl(url.href, url);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      fail('bad_response', `backend returned a result URL with unsupported scheme ${url.protocol}`, { url });
    }
    const timeouts = requestTimeouts(deadlineMs, now());
    if (timeouts === undefined) fail('timeout', 'job deadline passed before the result was downloaded', { url });
    const res = await send(url, { method: 'GET', headers: { accept: '*/*' } }, signal, timeouts, 'download');
    const ctx: FailureContext = { url, status: res.statusCode };
    if (res.statusCode < 200 || res.statusCode >= 300) {
      res.body.destroy();
      fail('bad_response', `result image download failed with HTTP ${res.statusCode}`, ctx);
    }
    const declared = Number(firstHeader(res.headers['content-length']));
    if (Number.isFinite(declared) && declared > config.maxDownloadBytes) {
      res.body.destroy();
      fail('bad_response', `result image is ${declared} bytes, over maxDownloadBytes ${config.maxDownloadBytes}`, ctx);
    }
    const { bytes, overflow } = await readBody(res, config.maxDownloadBytes, signal, url, 'download');
    if (overflow) fail('bad_response', `result image is over maxDownloadBytes ${config.maxDownloadBytes}`, ctx);
    if (bytes.length === 0) fail('bad_response', 'result image download was empty', ctx);
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
  }

  function decodeDataUrl(href: string, url: URL): Uint8Array {
    const match = /^data:[^,]*;base64,(.*)$/is.exec(href);
    if (!match?.[1]) fail('bad_response', 'backend returned a data URL that is not base64', { url });
    return decodeB64(match[1], url);
  }

  function decodeB64(value: string | RawJsonString, url: URL): Uint8Array {
    const bytes = decodeBase64Image(value);
    if (bytes === undefined) fail('bad_response', 'backend returned an empty image', { url });
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
  }

  async function generate(options: BackendCallOptions): Promise<BackendCallResult> {
    const { signal } = options;
    signal.throwIfAborted();
    const isEdit = options.images !== undefined && options.images.length > 0;
    const url = new URL(joinUrl(config.baseUrl, isEdit ? habits.editPath : '/images/generations'));
    const startedMs = now();

    let init: { method: 'POST'; body: string | FormData; headers?: Record<string, string> };
    if (isEdit) {
      init = { method: 'POST', body: await buildEditForm(toEditParts(options, habits)) };
      signal.throwIfAborted();
    } else {
      init = {
        method: 'POST',
        body: JSON.stringify(toGenerationBody(options, habits)),
        headers: { 'content-type': 'application/json' },
      };
    }

    const timeouts = requestTimeouts(options.deadlineMs, now());
    if (timeouts === undefined) fail('timeout', 'job deadline passed before the backend call', { url });

    const res = await send(url, init, signal, timeouts, 'call');
    logger.debug('backend answered', {
      backendId: config.id,
      url: redactUrl(url),
      status: res.statusCode,
      ms: now() - startedMs,
    });
    if (res.statusCode < 200 || res.statusCode >= 300) await failStatus(res, signal, url);

    const requestId = traceId(res.headers);
    const ctx: FailureContext = { url, status: res.statusCode, requestId };
    // Bound the body by what n images of the largest allowed size can weigh in base64.
    const limit = Math.ceil((config.maxDownloadBytes * 4) / 3) * options.n + RESPONSE_OVERHEAD_BYTES;
    const { bytes, overflow } = await readBody(res, limit, signal, url, 'call');
    if (overflow) fail('bad_response', `backend response is over ${limit} bytes`, ctx);

    let parsed: unknown;
    try {
      parsed = parseJsonBody(bytes);
    } catch {
      fail('bad_response', 'backend response is not valid JSON', ctx);
    }
    const data = isRecord(parsed) ? parsed.data : undefined;
    if (!Array.isArray(data) || data.length === 0) {
      fail('bad_response', 'backend answered 200 without images (empty or missing data)', ctx);
    }

    const warnings = unhonoured(options, habits, config.flavor);
    let entries: unknown[] = data;
    if (entries.length > options.n) {
      // Extra images (ControlNet maps, batch leftovers) are not what was asked for; skip downloading them.
      warnings.push({
        type: 'other',
        message: `backend returned ${entries.length} images for n=${options.n}; kept the first ${options.n}`,
      });
      entries = entries.slice(0, options.n);
    }

    const sources = entries.map((entry, i): Uint8Array | { url: string } => {
      const e = isRecord(entry) ? entry : {};
      if (e.b64_json instanceof RawJsonString || (typeof e.b64_json === 'string' && e.b64_json !== '')) return decodeB64(e.b64_json, url);
      if (typeof e.url === 'string' && e.url !== '') return { url: e.url };
      if (e.b64_json === '') fail('bad_response', `data[${i}] is an empty image`, ctx);
      return fail('bad_response', `data[${i}] has neither b64_json nor url`, ctx);
    });

    // Downloads run together; the first failure aborts the others, a caller's abort aborts all.
    const downloads = new AbortController();
    const downloadSignal = AbortSignal.any([signal, downloads.signal]);
    let images: Uint8Array[];
    try {
      images = await Promise.all(
        sources.map((s) => (s instanceof Uint8Array ? s : download(s.url, downloadSignal, options.deadlineMs))),
      );
    } catch (err) {
      downloads.abort();
      if (signal.aborted) throw signal.reason;
      throw err;
    }

    return {
      images,
      warnings,
      response: {
        timestampMs: now(),
        modelId: isRecord(parsed) && typeof parsed.model === 'string' ? parsed.model : options.model,
        ...(requestId !== undefined ? { headers: keptHeaders(res.headers) } : {}),
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
        retryAfterMs: parseRetryAfterMs(res.headers, now()),
      });
    }
  }

  async function close(): Promise<void> {
    await closeAgent(agent);
  }

  return {
    id: config.id,
    type: 'openai',
    // One seed per call: n images in one call would be one picture n times, so each call makes one.
    maxImagesPerCall: habits.seedPerImage ? config.maxImagesPerCall : 1,
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
  requestId?: string;
  cause?: unknown;
}





function keptHeaders(headers: Record<string, string | string[] | undefined>): Record<string, string> {
  const kept: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    const first = firstHeader(value);
    if (TRACE_HEADER.test(name) && first !== undefined) kept[name] = first;
  }
  return kept;
}

function traceId(headers: Record<string, string | string[] | undefined>): string | undefined {
  return Object.values(keptHeaders(headers))[0];
}
