/**
 * Adapter for AUTOMATIC1111 and Forge web UIs started with `--api`. One `generate` is one
 * `POST /sdapi/v1/txt2img` (or `/img2img` for edits). While it runs, `/internal/progress` is polled for
 * this call's own task id (sent as `force_task_id`) and fed to onProgress, with the live previews when the
 * caller wants partial images (`live_preview: true`, each new one once: A1111 numbers them). On abort the upstream call is
 * dropped and, because A1111 keeps working on a request whose client went away, the task is interrupted
 * — but only once `/internal/progress` says it is ours that runs: `/sdapi/v1/interrupt` takes no id and
 * stops whatever is running.
 *
 * Choices, each on purpose:
 * - n → `batch_size: n, n_iter: 1`: a batch runs the images side by side in one sampling pass, which is
 *   faster than n sequential iterations; A1111 gives image i the seed `seed + i` either way. The VRAM a
 *   batch needs is bounded by the backend's maxImagesPerCall.
 * - Edits send only the first input image: A1111 reads several `init_images` as one start image per batch
 *   member (and shrinks the batch to their number), not as references, so extra inputs are reported as an
 *   unsupported feature instead of being sent.
 * - The mask goes as a white = inpaint gray PNG with `inpainting_mask_invert: 0` (see toA1111Mask).
 * - `quality` has no A1111 counterpart and is not mapped; steps come from num_inference_steps or the config.
 *   `background: transparent` cannot be produced and is reported. `outputFormat` is the runner's job.
 * - `model` selects the checkpoint only with `sendCheckpoint`; otherwise the loaded checkpoint serves it.
 * - HTTP 5xx and connection failures are `unavailable` (retried by the runner): A1111 answers 500 for
 *   out-of-memory and other transient failures; 4xx (validation 422, unknown sampler 404, auth 401) are
 *   `rejected`.
 */
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import type { Dispatcher } from 'undici';
import type { A1111BackendConfig } from '../config/schema.js';
import { toA1111Mask } from '../images/masks.js';
import type { Logger } from '../obs/logger.js';
import { decodeBase64Image, parseJsonBody, RawJsonString } from './base64-json.js';
import { BackendError, sanitizeUpstreamMessage, type BackendFailureKind } from './errors.js';
import { extractUpstreamError, joinUrl, parseRetryAfterMs, redactUrl } from './openai.js';
import type { BackendCallOptions, BackendCallResult, BackendWarning, ImageBackend } from './types.js';
import { PROGRAMMING_ERROR_CODES, closeAgent, errorCode, isRecord } from './upstream.js';

/** Bytes of an error body read to find the message: A1111's `body` key echoes the whole request. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;
/** Bytes of a /internal/progress answer read without a live preview. */
const MAX_PROGRESS_BODY_BYTES = 64 * 1024;
/** ... and with one: a data URL of a full-size png (A1111's default live preview format) fits well within. */
const MAX_LIVE_PREVIEW_BODY_BYTES = 32 * 1024 * 1024;
/** One progress read or interrupt gives up after this long: A1111 answers them from another thread at once. */
const CONTROL_TIMEOUT_MS = 10_000;
/**
 * undici's timeouts run this much past the job deadline, so the runner's own TimeoutError (which the
 * caller sees as upstream_timeout) always fires first and undici never cuts a call short.
 */
const UNDICI_DEADLINE_MARGIN_MS = 1_000;
/** Node timers overflow (and fire at once) above this. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/**
 * A task cancelled while it waited for A1111's queue still runs when its turn comes (A1111 does not drop
 * requests whose client left); it is watched this long to be interrupted the moment it starts.
 */
const QUEUED_WATCH_MAX_MS = 30 * 60_000;
/** A task A1111 does not know yet (its request body still being parsed) is looked for this long. */
const UNSEEN_TASK_GRACE_MS = 3_000;

export interface A1111BackendDeps {
  logger: Logger;
  /** Clock in epoch ms. @default Date.now */
  now?: () => number;
  /** Environment the basic-auth credentials are read from. @default process.env */
  env?: NodeJS.ProcessEnv;
}

export type A1111Body = Record<string, unknown>;

type MappingConfig = Pick<
  A1111BackendConfig,
  'steps' | 'cfgScale' | 'samplerName' | 'denoisingStrength' | 'maskBlur' | 'inpaintingFill' | 'resizeMode' | 'sendCheckpoint'
>;

/** A task id of our own, so /internal/progress can be asked about this call and no other. */
export function newTaskId(): string {
  return `task(pixeld-${randomUUID()})`;
}

/** The txt2img body. Also the common part of img2img. */
export function toTxt2ImgBody(options: BackendCallOptions, config: MappingConfig, taskId: string): A1111Body {
  const [width, height] = options.size.split('x').map(Number);
  return {
    prompt: options.prompt,
    negative_prompt: options.negativePrompt ?? '',
    seed: options.seed,
    width,
    height,
    steps: options.numInferenceSteps ?? config.steps,
    cfg_scale: options.guidanceScale ?? config.cfgScale,
    sampler_name: config.samplerName,
    batch_size: options.n,
    n_iter: 1,
    force_task_id: taskId,
    send_images: true,
    // Saving would fill the provider's disk and, for batches, prepend a grid image to the answer.
    save_images: false,
    ...(config.sendCheckpoint
      ? {
          override_settings: { sd_model_checkpoint: options.model },
          // Restoring would load the previous checkpoint after every job, doubling the switch cost.
          override_settings_restore_afterwards: false,
        }
      : {}),
  };
}

export interface Img2ImgInputs {
  /** Base64 of the first input image, as the caller sent it. */
  initImageB64: string;
  /** Base64 of the mask already converted with toA1111Mask. */
  maskB64: string | undefined;
}

/** The img2img body for an edit: the first input image, and the converted mask when there is one. */
export function toImg2ImgBody(
  options: BackendCallOptions,
  config: MappingConfig,
  taskId: string,
  inputs: Img2ImgInputs,
): A1111Body {
  return {
    ...toTxt2ImgBody(options, config, taskId),
    init_images: [inputs.initImageB64],
    resize_mode: config.resizeMode,
    denoising_strength: config.denoisingStrength,
    // Keeps the inputs out of the `parameters` echo, which would otherwise double the answer's size.
    include_init_images: false,
    ...(inputs.maskB64 !== undefined
      ? {
          mask: inputs.maskB64,
          inpainting_mask_invert: 0,
          mask_blur: config.maskBlur,
          inpainting_fill: config.inpaintingFill,
        }
      : {}),
  };
}

/** What this call cannot honour, known before it is sent. */
export function callWarnings(options: BackendCallOptions): BackendWarning[] {
  const warnings: BackendWarning[] = [];
  const extra = (options.images?.length ?? 0) - 1;
  if (extra > 0) {
    warnings.push({
      type: 'unsupported',
      feature: 'images',
      message: `AUTOMATIC1111 edits one image; ${extra} further input image${extra === 1 ? ' was' : 's were'} not used`,
    });
  }
  if (options.background === 'transparent') {
    warnings.push({ type: 'unsupported', feature: 'background', message: 'AUTOMATIC1111 cannot render a transparent background' });
  }
  return warnings;
}

export type ParsedA1111Response =
  | { ok: true; images: Uint8Array[]; warnings: BackendWarning[]; modelName: string | undefined }
  | { ok: false; message: string };

/**
 * Reads `{images, parameters, info}`: drops a leading grid (`index_of_first_image`), trims images beyond n
 * (ControlNet and other extensions append their maps after the batch), and checks the seeds `info`
 * reports against seed..seed+n−1.
 */
export function parseA1111Response(parsed: unknown, want: { n: number; seed: number }): ParsedA1111Response {
  if (!isRecord(parsed) || !Array.isArray(parsed.images)) return { ok: false, message: 'backend response has no images array' };
  const warnings: BackendWarning[] = [];
  const info = parseInfo(parsed.info);
  if (info === undefined) {
    warnings.push({ type: 'other', feature: 'seed', message: 'backend response has no readable info; seeds not checked' });
  }

  let entries: unknown[] = parsed.images;
  const firstIndex = info?.index_of_first_image;
  if (typeof firstIndex === 'number' && Number.isInteger(firstIndex) && firstIndex > 0) entries = entries.slice(firstIndex);
  if (entries.length === 0) return { ok: false, message: 'backend answered 200 without images' };
  if (entries.length > want.n) {
    warnings.push({
      type: 'other',
      message: `backend returned ${entries.length} images for n=${want.n} (extension outputs such as ControlNet maps); kept the first ${want.n}`,
    });
    entries = entries.slice(0, want.n);
  }

  const images: Uint8Array[] = [];
  for (const [i, entry] of entries.entries()) {
    const bytes = typeof entry === 'string' || entry instanceof RawJsonString ? decodeBase64Image(entry) : undefined;
    if (bytes === undefined) return { ok: false, message: `images[${i}] is not a base64 image` };
    images.push(bytes);
  }

  if (info !== undefined) {
    const reported = reportedSeeds(info, images.length);
    const expected = images.map((_, i) => want.seed + i);
    if (reported === undefined) {
      warnings.push({ type: 'other', feature: 'seed', message: 'backend did not report the seeds it used' });
    } else if (reported.some((s, i) => s !== expected[i])) {
      warnings.push({
        type: 'other',
        feature: 'seed',
        message: `backend used seeds ${reported.join(', ')} instead of ${expected.join(', ')}`,
      });
    }
  }
  const modelName = typeof info?.sd_model_name === 'string' && info.sd_model_name !== '' ? info.sd_model_name : undefined;
  return { ok: true, images, warnings, modelName };
}

function parseInfo(info: unknown): Record<string, unknown> | undefined {
  if (isRecord(info)) return info;
  if (typeof info !== 'string') return undefined;
  try {
    const parsed: unknown = JSON.parse(info);
    return isRecord(parsed) ? parsed : undefined;
  } catch {
    return undefined;
  }
}

function reportedSeeds(info: Record<string, unknown>, count: number): number[] | undefined {
  const all = info.all_seeds;
  if (Array.isArray(all) && all.length >= count && all.slice(0, count).every((s) => typeof s === 'number')) {
    return all.slice(0, count) as number[];
  }
  if (count === 1 && typeof info.seed === 'number') return [info.seed];
  return undefined;
}

/**
 * The message of an A1111 error body. Its handler answers `{"error": exception class, "detail":
 * HTTPException detail, "body": the request body, "errors": str(exception)}`; `body` echoes the caller's
 * prompt and images and is never used. Request validation (422) keeps FastAPI's `{"detail": [...]}`.
 */
export function extractA1111Error(text: string): string | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return text.trim() === '' ? undefined : text;
  }
  if (isRecord(parsed) && typeof parsed.error === 'string' && ('errors' in parsed || 'detail' in parsed)) {
    const detail = typeof parsed.detail === 'string' && parsed.detail !== '' ? parsed.detail : undefined;
    const errors = typeof parsed.errors === 'string' && parsed.errors !== '' ? parsed.errors : undefined;
    // For HTTPException `errors` is "404: <detail>"; the detail alone reads better.
    if (parsed.error === 'HTTPException') return detail ?? errors;
    const text = errors ?? detail;
    return text !== undefined ? `${parsed.error}: ${text}` : parsed.error;
  }
  return extractUpstreamError(text).message;
}

export interface RequestTimeouts {
  headersTimeout: number;
  bodyTimeout: number;
}

/**
 * undici's per-request timeouts, from the time left before the job deadline plus a margin (its 300 s
 * defaults would cut a slow model short). Undefined once the deadline has passed: undici reads 0 as
 * "no timeout", so a spent deadline must never become 0.
 */
export function requestTimeouts(deadlineMs: number, nowMs: number): RequestTimeouts | undefined {
  const remaining = Math.ceil(deadlineMs - nowMs);
  if (!(remaining > 0)) return undefined;
  const ms = Math.min(remaining + UNDICI_DEADLINE_MARGIN_MS, MAX_TIMER_MS);
  return { headersTimeout: ms, bodyTimeout: ms };
}

/** Basic-auth header value for `--api-auth user:password`, or undefined when none is configured. */
export function basicAuthHeader(
  config: Pick<A1111BackendConfig, 'id' | 'usernameEnv' | 'passwordEnv'>,
  env: NodeJS.ProcessEnv,
): { header: string | undefined; problem: string | undefined } {
  if (config.usernameEnv === undefined && config.passwordEnv === undefined) return { header: undefined, problem: undefined };
  if (config.usernameEnv === undefined || config.passwordEnv === undefined) {
    throw new Error(`backend ${config.id}: usernameEnv and passwordEnv must be set together`);
  }
  const user = env[config.usernameEnv];
  const password = env[config.passwordEnv];
  if (!user || password === undefined) {
    return { header: undefined, problem: `env var ${!user ? config.usernameEnv : config.passwordEnv} is unset or empty` };
  }
  return { header: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`, problem: undefined };
}

/** What /internal/progress says about one task. */
export type TaskState =
  /** `livePreview`: a preview newer than the one asked past (`id_live_preview`), when previews were asked for. */
  | { kind: 'active'; progress: number | undefined; livePreview?: { id: number; image: Uint8Array } }
  | { kind: 'queued' | 'completed' | 'unknown' }
  /** The server has no /internal/progress (API-only `--nowebui` builds). */
  | { kind: 'unsupported' }
  | { kind: 'error'; message: string };

/** Reads a `/internal/progress` answer: `{active, queued, completed, progress (0–1), eta, textinfo, …}`. */
export function toTaskState(body: unknown): TaskState {
  if (!isRecord(body)) return { kind: 'error', message: 'progress answer is not a JSON object' };
  if (body.active === true) {
    const p = body.progress;
    const progress = typeof p === 'number' && Number.isFinite(p) ? Math.min(1, Math.max(0, p)) : undefined;
    const id = body.id_live_preview;
    const image = typeof body.live_preview === 'string' ? decodeBase64Image(body.live_preview) : undefined;
    if (image === undefined || typeof id !== 'number' || !Number.isInteger(id)) return { kind: 'active', progress };
    return { kind: 'active', progress, livePreview: { id, image } };
  }
  if (body.queued === true) return { kind: 'queued' };
  if (body.completed === true) return { kind: 'completed' };
  return { kind: 'unknown' };
}

export function createA1111Backend(config: A1111BackendConfig, deps: A1111BackendDeps): ImageBackend {
  const now = deps.now ?? Date.now;
  const logger = deps.logger;
  const agent = new Agent({ connect: { timeout: config.connectTimeoutMs } });
  /** Aborted by close(): ends the background watchers of cancelled queued tasks. */
  const closing = new AbortController();
  const auth = basicAuthHeader(config, deps.env ?? process.env);
  if (auth.problem !== undefined) {
    logger.warn('AUTOMATIC1111 basic-auth credentials are missing; calling without them', { backendId: config.id, problem: auth.problem });
  }

  function url(path: string): URL {
    return new URL(joinUrl(config.baseUrl, path));
  }

  function headers(extra: Record<string, string> = {}): Record<string, string> {
    return { accept: 'application/json', ...(auth.header !== undefined ? { authorization: auth.header } : {}), ...extra };
  }

  function fail(kind: BackendFailureKind, message: string, ctx: { url: URL; status?: number; retryAfterMs?: number; cause?: unknown }): never {
    const details = [...(ctx.status !== undefined ? [`Status: ${ctx.status}`] : []), `URL: ${redactUrl(ctx.url)}`];
    throw new BackendError(config.id, kind, message, { status: ctx.status, retryAfterMs: ctx.retryAfterMs, details, cause: ctx.cause });
  }

  /** A network-level failure of the main call. Never returns. */
  function failTransport(err: unknown, signal: AbortSignal, target: URL): never {
    if (signal.aborted) throw signal.reason;
    const code = errorCode(err);
    if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
      fail('timeout', 'backend did not answer before the job deadline', { url: target, cause: err });
    }
    if (err instanceof TypeError || (code !== undefined && PROGRAMMING_ERROR_CODES.has(code))) throw err;
    const reason = err instanceof Error ? err.message : String(err);
    // A refused connection, or a socket closed mid-answer: the web UI is down or died while generating.
    fail('unavailable', `backend unreachable: ${code !== undefined ? `${code} ` : ''}${reason}`, { url: target, cause: err });
  }

  async function readBody(res: Dispatcher.ResponseData, limit: number): Promise<{ bytes: Buffer; overflow: boolean }> {
    const chunks: Buffer[] = [];
    let total = 0;
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
    return { bytes: Buffer.concat(chunks), overflow: false };
  }

  /** One small JSON call for progress or interrupt, bounded by CONTROL_TIMEOUT_MS and `signal`. */
  async function control(path: string, body: unknown, signal: AbortSignal, maxBodyBytes = MAX_PROGRESS_BODY_BYTES): Promise<{ status: number; json: unknown }> {
    const res = await request(url(path), {
      dispatcher: agent,
      method: 'POST',
      headers: headers({ 'content-type': 'application/json' }),
      body: JSON.stringify(body),
      signal: AbortSignal.any([signal, AbortSignal.timeout(CONTROL_TIMEOUT_MS)]),
      headersTimeout: CONTROL_TIMEOUT_MS,
      bodyTimeout: CONTROL_TIMEOUT_MS,
    });
    const { bytes, overflow } = await readBody(res, maxBodyBytes);
    let json: unknown;
    try {
      json = overflow ? undefined : JSON.parse(bytes.toString('utf8'));
    } catch {
      json = undefined;
    }
    return { status: res.statusCode, json };
  }

  /** @param previewsAfter ask for a live preview newer than this one (-1: any); undefined: no previews */
  async function readTask(taskId: string, signal: AbortSignal, previewsAfter?: number): Promise<TaskState> {
    try {
      const { status, json } =
        previewsAfter === undefined
          ? await control('/internal/progress', { id_task: taskId, id_live_preview: -1, live_preview: false }, signal)
          : await control('/internal/progress', { id_task: taskId, id_live_preview: previewsAfter, live_preview: true }, signal, MAX_LIVE_PREVIEW_BODY_BYTES);
      if (status === 404) return { kind: 'unsupported' };
      if (status < 200 || status >= 300) return { kind: 'error', message: `HTTP ${status}` };
      return toTaskState(json);
    } catch (err) {
      return { kind: 'error', message: err instanceof Error ? err.message : String(err) };
    }
  }

  /** Feeds onProgress (and onPartialImage) until `stop` fires. Polls one at a time, so a slow answer never piles up requests. */
  async function pollProgress(taskId: string, options: BackendCallOptions, stop: AbortSignal): Promise<void> {
    let lastError: string | undefined;
    let lastPreviewId = options.onPartialImage ? -1 : undefined;
    while (!stop.aborted) {
      try {
        await sleep(config.progressPollMs, undefined, { signal: stop });
      } catch {
        return;
      }
      const state = await readTask(taskId, stop, lastPreviewId);
      if (stop.aborted) return;
      if (state.kind === 'unsupported') {
        logger.debug('backend has no /internal/progress; no progress for this call', { backendId: config.id, taskId });
        return;
      }
      if (state.kind === 'error' && state.message !== lastError) {
        logger.debug('progress read failed', { backendId: config.id, taskId, message: state.message });
      }
      lastError = state.kind === 'error' ? state.message : undefined;
      if (state.kind !== 'active') continue;
      if (state.progress !== undefined) options.onProgress(state.progress * 100);
      if (state.livePreview !== undefined && lastPreviewId !== undefined && state.livePreview.id !== lastPreviewId) {
        lastPreviewId = state.livePreview.id;
        options.onPartialImage?.(state.livePreview.image);
      }
    }
  }

  async function interrupt(taskId: string, why: string): Promise<void> {
    try {
      const { status } = await control('/sdapi/v1/interrupt', {}, closing.signal);
      if (status < 200 || status >= 300) throw new Error(`HTTP ${status}`);
      logger.info('interrupted our running task on the backend', { backendId: config.id, taskId, why });
    } catch (err) {
      logger.warn('could not interrupt our task on the backend', { backendId: config.id, taskId, error: String(err) });
    }
  }

  /**
   * After an abort: interrupt the task if it is the one running now; if it still waits in A1111's queue
   * (or A1111 has not registered it yet), keep watching in the background and interrupt it when it starts.
   * There is a window of one round trip in which ours may finish and another start before the interrupt
   * lands; A1111 offers no way to interrupt by id.
   */
  async function stopTask(taskId: string, why: string): Promise<void> {
    const state = await readTask(taskId, closing.signal);
    switch (state.kind) {
      case 'active':
        await interrupt(taskId, why);
        return;
      case 'queued':
      case 'unknown':
        void watchUntilStarted(taskId, why, state.kind).catch((err: unknown) =>
          logger.warn('stopped watching an aborted queued task', { backendId: config.id, taskId, error: String(err) }),
        );
        return;
      case 'unsupported':
        logger.warn('backend has no /internal/progress, so an aborted task cannot be told apart from others and is not interrupted', {
          backendId: config.id,
          taskId,
        });
        return;
      case 'error':
        logger.warn('could not read the aborted task’s state; not interrupting', { backendId: config.id, taskId, message: state.message });
        return;
      case 'completed':
        return;
    }
  }

  async function watchUntilStarted(taskId: string, why: string, first: 'queued' | 'unknown'): Promise<void> {
    const startedMs = now();
    let everQueued = first === 'queued';
    const grace = Math.max(UNSEEN_TASK_GRACE_MS, 2 * config.progressPollMs);
    while (!closing.signal.aborted && now() - startedMs < QUEUED_WATCH_MAX_MS) {
      try {
        await sleep(Math.min(config.progressPollMs, 1_000), undefined, { signal: closing.signal });
      } catch {
        return;
      }
      const state = await readTask(taskId, closing.signal);
      if (state.kind === 'active') {
        await interrupt(taskId, `${why} (it started after it was aborted while queued)`);
        return;
      }
      if (state.kind === 'completed' || state.kind === 'unsupported') return;
      if (state.kind === 'queued') everQueued = true;
      if (state.kind === 'unknown' && (everQueued || now() - startedMs > grace)) return;
    }
    if (!closing.signal.aborted && now() - startedMs >= QUEUED_WATCH_MAX_MS) {
      logger.warn('an aborted task is still queued on the backend; no longer watching it', { backendId: config.id, taskId });
    }
  }

  async function encodeInputs(options: BackendCallOptions): Promise<Img2ImgInputs> {
    const first = options.images![0]!;
    const initImageB64 = (await readFile(first.path)).toString('base64');
    const maskB64 = options.mask !== undefined ? (await toA1111Mask(await readFile(options.mask.path))).toString('base64') : undefined;
    return { initImageB64, maskB64 };
  }

  async function generate(options: BackendCallOptions): Promise<BackendCallResult> {
    const { signal } = options;
    signal.throwIfAborted();
    const isEdit = options.images !== undefined && options.images.length > 0;
    const target = url(isEdit ? '/sdapi/v1/img2img' : '/sdapi/v1/txt2img');
    const taskId = newTaskId();
    const body = isEdit
      ? toImg2ImgBody(options, config, taskId, await encodeInputs(options))
      : toTxt2ImgBody(options, config, taskId);
    signal.throwIfAborted();
    const timeouts = requestTimeouts(options.deadlineMs, now());
    if (timeouts === undefined) fail('timeout', 'job deadline passed before the backend call', { url: target });

    const polling = new AbortController();
    const startedMs = now();
    let submitted = false;
    try {
      // A throwing onProgress must neither fail the call nor become an unhandled rejection.
      void pollProgress(taskId, options, AbortSignal.any([polling.signal, signal])).catch((err: unknown) =>
        logger.warn('progress reporting stopped', { backendId: config.id, taskId, error: String(err) }),
      );
      let res: Dispatcher.ResponseData;
      try {
        submitted = true;
        res = await request(target, {
          dispatcher: agent,
          method: 'POST',
          headers: headers({ 'content-type': 'application/json' }),
          body: JSON.stringify(body),
          signal,
          ...timeouts,
        });
      } catch (err) {
        failTransport(err, signal, target);
      }
      logger.debug('backend answered', { backendId: config.id, url: redactUrl(target), status: res.statusCode, ms: now() - startedMs, taskId });

      if (res.statusCode < 200 || res.statusCode >= 300) {
        let text = '';
        try {
          text = (await readBody(res, MAX_ERROR_BODY_BYTES)).bytes.toString('utf8');
        } catch (err) {
          failTransport(err, signal, target);
        }
        const status = res.statusCode;
        const message = sanitizeUpstreamMessage(extractA1111Error(text) ?? `HTTP ${status}`);
        if (status >= 500 || status === 429) {
          fail('unavailable', `backend unavailable (HTTP ${status}): ${message}`, {
            url: target,
            status,
            retryAfterMs: parseRetryAfterMs(res.headers, now()),
          });
        }
        fail(status >= 400 ? 'rejected' : 'bad_response', status >= 400 ? message : `backend answered HTTP ${status}`, { url: target, status });
      }

      let read: { bytes: Buffer; overflow: boolean };
      try {
        read = await readBody(res, config.maxResponseBytes);
      } catch (err) {
        failTransport(err, signal, target);
      }
      const ctx = { url: target, status: res.statusCode };
      if (read.overflow) fail('bad_response', `backend response is over maxResponseBytes ${config.maxResponseBytes}`, ctx);
      let parsed: unknown;
      try {
        parsed = parseJsonBody(read.bytes);
      } catch {
        fail('bad_response', 'backend response is not valid JSON', ctx);
      }
      const result = parseA1111Response(parsed, { n: options.n, seed: options.seed });
      if (!result.ok) fail('bad_response', result.message, ctx);
      return {
        images: result.images,
        warnings: [...callWarnings(options), ...result.warnings],
        response: { timestampMs: now(), modelId: result.modelName ?? options.model },
      };
    } catch (err) {
      if (!signal.aborted) throw err;
      if (submitted) {
        const reason: unknown = signal.reason;
        await stopTask(taskId, reason instanceof Error ? reason.name : 'aborted');
      }
      throw signal.reason;
    } finally {
      polling.abort();
    }
  }

  async function checkHealth(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const target = url(config.healthPath);
    let res: Dispatcher.ResponseData;
    try {
      res = await request(target, { dispatcher: agent, method: 'GET', headers: headers(), signal });
    } catch (err) {
      failTransport(err, signal, target);
    }
    await res.body.dump().catch(() => undefined);
    if (res.statusCode < 200 || res.statusCode >= 300) {
      fail('unavailable', `health check answered HTTP ${res.statusCode}`, {
        url: target,
        status: res.statusCode,
        retryAfterMs: parseRetryAfterMs(res.headers, now()),
      });
    }
  }

  async function close(): Promise<void> {
    closing.abort();
    await closeAgent(agent);
  }

  return {
    id: config.id,
    type: 'a1111',
    maxImagesPerCall: config.maxImagesPerCall,
    rerunInterruptedJobs: config.rerunInterruptedJobs,
    generate,
    checkHealth,
    close,
  };
}



