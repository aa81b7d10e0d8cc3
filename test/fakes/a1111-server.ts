/**
 * A fake AUTOMATIC1111 / Forge web UI API (`--api`) for adapter tests. It follows the real server where a
 * client can tell the difference (modules/api/api.py, modules/progress.py, modules/processing.py):
 * - one generation at a time behind a FIFO lock; a request waiting for it is "queued" for /internal/progress;
 *   `force_task_id` names the task; a client that disconnects does NOT stop its task (A1111 does not notice);
 * - `/sdapi/v1/interrupt` takes no id and stops whatever runs; the interrupted request still answers 200;
 * - answers `{images: [base64 png], parameters, info: "<JSON string>"}` with seed + i per image in
 *   `info.all_seeds`; img2img really applies the mask as A1111 reads it (create_binary_mask: RGBA with
 *   non-opaque alpha → alpha, anything else → luma; > 128 inpaints; inpainting_mask_invert flips), so a
 *   mask sent in the wrong convention changes the wrong pixels;
 * - errors in A1111's `{"error","detail","body","errors"}` shape, request validation in FastAPI's 422 shape;
 * - live previews (modules/progress.py): every `show_progress_every_n_steps` sampling steps the running task
 *   gets a new numbered preview, which `/internal/progress` returns as a png data URL to a `live_preview: true`
 *   request whose `id_live_preview` is not that number, with the number in `id_live_preview`.
 * Pictures are solid colours that are a function of the seed (colourForSeed), so tests can tell images apart.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import sharp from 'sharp';
import { colourForSeed, renderImage } from './openai-compatible-server.js';

export interface FakeA1111ServerOptions {
  /** Sampler names accepted; others get A1111's 404 "Sampler not found". */
  samplers?: string[];
  /** As `--api-auth user:password`: /sdapi routes then need HTTP basic auth. */
  auth?: { username: string; password: string };
  /** false: an API-only (`--nowebui`) server, which has no /internal/progress. @default true */
  progressRoute?: boolean;
  /** Checkpoint reported in info.sd_model_name and /sdapi/v1/options. @default 'v1-5-pruned-emaonly' */
  checkpoint?: string;
}

export interface FakeA1111Behaviour {
  /** Time one sampling step takes; a task takes steps × n_iter of them. */
  stepMs: number;
  /** Sampling never ends on its own: the task stays active until /sdapi/v1/interrupt. */
  hang: boolean;
  /** The process dies one step into each task: the connection is cut and the task vanishes. */
  dieMidRequest: boolean;
  /** Extra images appended after the batch, as ControlNet appends its detected maps. */
  extraImages: number;
  /** Seeds used and reported: `normal` seed + i, `same` every image on the first seed, `random`. */
  seeds: 'normal' | 'same' | 'random';
  /** A1111's show_progress_every_n_steps (default 10): a live preview every this many steps; 0: none. */
  livePreviewEveryNSteps: number;
}

export interface A1111FailureSpec {
  status: number;
  /** Exact body; default: A1111's shape built from error/detail/errors. */
  body?: unknown;
  error?: string;
  detail?: string;
  errors?: string;
}

export interface RecordedA1111Request {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  json?: unknown;
  /** The client went away before the response was complete. */
  disconnected: boolean;
}

export type FakeTaskState = 'queued' | 'active' | 'finished' | 'interrupted' | 'died';

export interface FakeTask {
  id: string;
  route: 'txt2img' | 'img2img';
  state: FakeTaskState;
}

export interface FakeA1111Server {
  /** http://127.0.0.1:port */
  readonly url: string;
  readonly requests: RecordedA1111Request[];
  /** Every /sdapi/v1/interrupt, with the task that was running when it came. */
  readonly interrupts: Array<{ atMs: number; activeTask: string | undefined }>;
  readonly tasks: Map<string, FakeTask>;
  currentTask(): string | undefined;
  /** Resolves with the id of the next task that starts running. */
  nextTaskStarted(): Promise<string>;
  /** The next `count` txt2img/img2img requests fail with this answer. */
  setNextFailures(count: number, failure: A1111FailureSpec): void;
  setBehaviour(patch: Partial<FakeA1111Behaviour>): void;
  resetBehaviour(): void;
  close(): Promise<void>;
}

const DEFAULT_BEHAVIOUR: FakeA1111Behaviour = { stepMs: 0, hang: false, dieMidRequest: false, extraImages: 0, seeds: 'normal', livePreviewEveryNSteps: 10 };

export const DEFAULT_SAMPLERS = ['Euler a', 'Euler', 'DPM++ 2M', 'DPM++ 2M Karras', 'DPM++ SDE', 'DDIM', 'UniPC'];

/** A1111's handler body for an exception (modules/api/api.py, api_middleware.handle_exception). */
export function a1111ErrorBody(error: string, detail: string, errors: string): Record<string, string> {
  return { error, detail, body: '', errors };
}

/** What A1111 answers when the GPU runs out of memory mid-generation. */
export const A1111_OOM_FAILURE: A1111FailureSpec = {
  status: 500,
  error: 'OutOfMemoryError',
  detail: '',
  errors: 'CUDA out of memory. Tried to allocate 9.00 GiB (GPU 0; 23.65 GiB total capacity; 18.20 GiB already allocated)',
};

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: unknown,
  ) {
    super(`HTTP ${status}`);
  }
}

function httpException(status: number, detail: string): HttpError {
  return new HttpError(status, a1111ErrorBody('HTTPException', detail, `${status}: ${detail}`));
}

function validationError(field: string, msg: string, type: string): HttpError {
  return new HttpError(422, { detail: [{ loc: ['body', field], msg, type }] });
}

const INT_FIELDS = ['seed', 'width', 'height', 'steps', 'batch_size', 'n_iter', 'resize_mode', 'mask_blur', 'inpainting_fill', 'inpainting_mask_invert'];
const FLOAT_FIELDS = ['cfg_scale', 'denoising_strength'];

interface RunningTask {
  task: FakeTask;
  stop: AbortController;
  jobCount: number;
  jobNo: number;
  samplingSteps: number;
  samplingStep: number;
  startedMs: number;
  width: number;
  height: number;
  seed: number;
  /** shared.state.id_live_preview: the number of the latest preview, 0 before the first. */
  livePreviewId: number;
  /** The latest preview, png. */
  livePreview: Buffer | undefined;
}

export async function startFakeA1111Server(options: FakeA1111ServerOptions = {}): Promise<FakeA1111Server> {
  const samplers = options.samplers ?? DEFAULT_SAMPLERS;
  const checkpoint = options.checkpoint ?? 'v1-5-pruned-emaonly';
  const progressRoute = options.progressRoute ?? true;
  const requests: RecordedA1111Request[] = [];
  const interrupts: Array<{ atMs: number; activeTask: string | undefined }> = [];
  const tasks = new Map<string, FakeTask>();
  const queue: string[] = [];
  const finished: string[] = [];
  const failures: A1111FailureSpec[] = [];
  const startWaiters: Array<(id: string) => void> = [];
  let behaviour: FakeA1111Behaviour = { ...DEFAULT_BEHAVIOUR };
  let running: RunningTask | undefined;
  let lockTail: Promise<void> = Promise.resolve();
  const closed = new AbortController();

  /** FIFO lock like A1111's queue_lock: resolves with the release function when it is our turn. */
  function acquire(): Promise<() => void> {
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const before = lockTail;
    lockTail = before.then(() => mine);
    return before.then(() => release);
  }

  function sendJson(res: ServerResponse, status: number, body: unknown): void {
    if (res.destroyed || res.headersSent) return;
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  const server = createServer((req, res) => {
    const record: RecordedA1111Request = { method: req.method ?? 'GET', path: req.url ?? '/', headers: req.headers, disconnected: false };
    requests.push(record);
    res.on('close', () => {
      if (!res.writableFinished) record.disconnected = true;
    });
    handle(req, res, record).catch((err: unknown) => {
      if (err instanceof HttpError) sendJson(res, err.status, err.body);
      else sendJson(res, 500, a1111ErrorBody(err instanceof Error ? err.name : 'Exception', '', String(err)));
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse, record: RecordedA1111Request): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const text = await readText(req);
    if (text !== '') {
      try {
        record.json = JSON.parse(text);
      } catch {
        throw new HttpError(422, { detail: [{ loc: ['body', 0], msg: 'Expecting value: line 1 column 1 (char 0)', type: 'value_error.jsondecode' }] });
      }
    }
    if (path.startsWith('/sdapi/') && options.auth) checkAuth(req.headers.authorization);

    if (req.method === 'POST' && path === '/internal/progress' && progressRoute) return sendJson(res, 200, taskProgress(record.json));
    if (req.method === 'GET' && path === '/sdapi/v1/progress') return sendJson(res, 200, globalProgress());
    if (req.method === 'POST' && path === '/sdapi/v1/interrupt') {
      interrupts.push({ atMs: Date.now(), activeTask: running?.task.id });
      running?.stop.abort();
      return sendJson(res, 200, {});
    }
    if (req.method === 'GET' && path === '/sdapi/v1/options') {
      return sendJson(res, 200, {
        sd_model_checkpoint: checkpoint,
        samples_format: 'png',
        return_grid: true,
        mask_round: true,
        live_previews_enable: true,
        live_previews_image_format: 'png',
        show_progress_every_n_steps: behaviour.livePreviewEveryNSteps,
      });
    }
    if (req.method === 'GET' && path === '/sdapi/v1/samplers') {
      return sendJson(res, 200, samplers.map((name) => ({ name, aliases: [], options: {} })));
    }
    if (req.method === 'POST' && (path === '/sdapi/v1/txt2img' || path === '/sdapi/v1/img2img')) {
      return generate(res, path.endsWith('img2img') ? 'img2img' : 'txt2img', record.json);
    }
    sendJson(res, 404, { detail: 'Not Found' });
  }

  function checkAuth(header: string | undefined): void {
    const match = /^Basic (.+)$/.exec(header ?? '');
    if (!match) throw httpException(401, 'Not authenticated');
    const [user, ...rest] = Buffer.from(match[1]!, 'base64').toString('utf8').split(':');
    if (user !== options.auth!.username || rest.join(':') !== options.auth!.password) {
      throw httpException(401, 'Incorrect username or password');
    }
  }

  function taskProgress(body: unknown): Record<string, unknown> {
    const b = isObject(body) ? body : {};
    const id = typeof b.id_task === 'string' ? b.id_task : '';
    const idLivePreview = typeof b.id_live_preview === 'number' ? b.id_live_preview : -1;
    const wantsPreview = b.live_preview === true;
    const active = running?.task.id === id;
    const queued = queue.includes(id);
    const completed = finished.includes(id);
    if (!active || !running) {
      return {
        active: false,
        queued,
        completed,
        progress: null,
        eta: null,
        live_preview: null,
        id_live_preview: -1,
        textinfo: queued ? `In queue: ${queue.indexOf(id) + 1}/${queue.length}` : 'Waiting...',
      };
    }
    const progress = progressOf(running);
    const elapsedS = (Date.now() - running.startedMs) / 1000;
    return {
      active: true,
      queued: false,
      completed: false,
      progress,
      eta: progress > 0 ? elapsedS / progress - elapsedS : null,
      ...(wantsPreview && running.livePreview !== undefined && running.livePreviewId !== idLivePreview
        ? { live_preview: `data:image/png;base64,${running.livePreview.toString('base64')}`, id_live_preview: running.livePreviewId }
        : { live_preview: null, id_live_preview: idLivePreview }),
      textinfo: null,
    };
  }

  function globalProgress(): Record<string, unknown> {
    const progress = running ? progressOf(running) : 0;
    const elapsedS = running ? (Date.now() - running.startedMs) / 1000 : 0;
    return {
      progress,
      eta_relative: progress > 0 ? elapsedS / progress - elapsedS : 0,
      state: {
        skipped: false,
        interrupted: running?.stop.signal.aborted ?? false,
        stopping_generation: false,
        job: running ? `scripts_${running.task.route}` : '',
        job_count: running?.jobCount ?? 0,
        job_timestamp: '20260101000000',
        job_no: running?.jobNo ?? 0,
        sampling_step: running?.samplingStep ?? 0,
        sampling_steps: running?.samplingSteps ?? 0,
      },
      current_image: null,
      textinfo: null,
      current_task: running?.task.id ?? null,
    };
  }

  async function generate(res: ServerResponse, route: 'txt2img' | 'img2img', json: unknown): Promise<void> {
    if (!isObject(json)) throw new HttpError(422, { detail: [{ loc: ['body'], msg: 'field required', type: 'value_error.missing' }] });
    const body = json;
    for (const field of INT_FIELDS) {
      if (body[field] !== undefined && body[field] !== null && !Number.isInteger(body[field])) {
        throw validationError(field, 'value is not a valid integer', 'type_error.integer');
      }
    }
    for (const field of FLOAT_FIELDS) {
      if (body[field] !== undefined && typeof body[field] !== 'number') throw validationError(field, 'value is not a valid float', 'type_error.float');
    }
    const failure = failures.shift();
    if (failure) {
      throw new HttpError(
        failure.status,
        failure.body ?? a1111ErrorBody(failure.error ?? 'Exception', failure.detail ?? '', failure.errors ?? `fake failure ${failure.status}`),
      );
    }
    const samplerName = typeof body.sampler_name === 'string' ? body.sampler_name : 'Euler a';
    if (!samplers.includes(samplerName)) throw httpException(404, 'Sampler not found');

    const width = (body.width as number | undefined) ?? 512;
    const height = (body.height as number | undefined) ?? 512;
    const steps = (body.steps as number | undefined) ?? 50;
    const batchSize = (body.batch_size as number | undefined) ?? 1;
    const nIter = (body.n_iter as number | undefined) ?? 1;
    let init: Buffer | undefined;
    let mask: Buffer | undefined;
    if (route === 'img2img') {
      const images = body.init_images;
      if (!Array.isArray(images) || images.length === 0) throw httpException(404, 'Init image not found');
      if (images.length > 1) throw httpException(500, 'the fake takes one init image');
      init = await decodeImage(images[0]);
      if (body.mask !== undefined && body.mask !== null) mask = await decodeImage(body.mask);
    }

    const id = typeof body.force_task_id === 'string' && body.force_task_id !== '' ? body.force_task_id : `task(${randomBytes(8).toString('hex')})`;
    const task: FakeTask = { id, route, state: 'queued' };
    tasks.set(id, task);
    queue.push(id);
    const release = await acquire();
    queue.splice(queue.indexOf(id), 1);
    if (closed.signal.aborted) return release();
    const run: RunningTask = {
      task,
      stop: new AbortController(),
      jobCount: nIter,
      jobNo: 0,
      samplingSteps: steps,
      samplingStep: 0,
      startedMs: Date.now(),
      width,
      height,
      seed: typeof body.seed === 'number' ? body.seed : 0,
      livePreviewId: 0,
      livePreview: undefined,
    };
    running = run;
    task.state = 'active';
    for (const resolve of startWaiters.splice(0)) resolve(id);
    const stop = AbortSignal.any([run.stop.signal, closed.signal]);
    const done = (state: FakeTaskState): void => {
      task.state = state;
      if (running === run) running = undefined;
      finished.push(id);
      if (finished.length > 16) finished.shift();
      release();
    };

    const died = await sample(run, stop, res);
    if (died) {
      task.state = 'died';
      if (running === run) running = undefined;
      release();
      return;
    }

    const seeds = seedsFor(body.seed, batchSize * nIter);
    const outputs: Buffer[] = [];
    for (const seed of seeds) {
      outputs.push(init ? await inpaint(init, mask, seed, width, height, body) : await renderImage(width, height, seed));
    }
    let indexOfFirstImage = 0;
    // With save_images, A1111's "return grid" option (on by default) puts a grid of the batch first.
    if (body.save_images === true && outputs.length > 1) {
      outputs.unshift(await sharp({ create: { width, height, channels: 3, background: '#ffffff' } }).png().toBuffer());
      indexOfFirstImage = 1;
    }
    for (let i = 0; i < behaviour.extraImages; i += 1) {
      outputs.push(await sharp({ create: { width, height, channels: 3, background: { r: 20 + i, g: 20 + i, b: 20 + i } } }).png().toBuffer());
    }
    done(run.stop.signal.aborted ? 'interrupted' : 'finished');

    const prompt = typeof body.prompt === 'string' ? body.prompt : '';
    const negative = typeof body.negative_prompt === 'string' ? body.negative_prompt : '';
    const info = {
      prompt,
      all_prompts: seeds.map(() => prompt),
      negative_prompt: negative,
      all_negative_prompts: seeds.map(() => negative),
      seed: seeds[0],
      all_seeds: seeds,
      subseed: 1234,
      all_subseeds: seeds.map((_, i) => 1234 + i),
      subseed_strength: 0,
      width,
      height,
      sampler_name: samplerName,
      cfg_scale: body.cfg_scale ?? 7,
      steps,
      batch_size: batchSize,
      restore_faces: false,
      face_restoration_model: null,
      sd_model_name: checkpoint,
      sd_model_hash: '6ce0161689',
      seed_resize_from_w: -1,
      seed_resize_from_h: -1,
      denoising_strength: route === 'img2img' ? (body.denoising_strength ?? 0.75) : null,
      extra_generation_params: {},
      index_of_first_image: indexOfFirstImage,
      infotexts: seeds.map((s) => `${prompt}\nSteps: ${steps}, Sampler: ${samplerName}, Seed: ${s}, Size: ${width}x${height}`),
      styles: [],
      job_timestamp: '20260101000000',
      clip_skip: 1,
      is_using_inpainting_conditioning: false,
      version: 'v1.10.1',
    };
    const parameters: Record<string, unknown> = { ...body };
    if (route === 'img2img' && body.include_init_images !== true) {
      parameters.init_images = null;
      parameters.mask = null;
    }
    sendJson(res, 200, { images: outputs.map((b) => b.toString('base64')), parameters, info: JSON.stringify(info) });
  }

  /** Runs the sampling steps. Resolves true when the process "died" in the middle. */
  async function sample(run: RunningTask, stop: AbortSignal, res: ServerResponse): Promise<boolean> {
    for (run.jobNo = 0; run.jobNo < run.jobCount; run.jobNo += 1) {
      for (run.samplingStep = 0; run.samplingStep < run.samplingSteps; ) {
        if (stop.aborted) return false;
        if (behaviour.hang) {
          await new Promise<void>((resolve) => (stop.aborted ? resolve() : stop.addEventListener('abort', () => resolve(), { once: true })));
          return false;
        }
        try {
          await sleep(behaviour.stepMs, undefined, { signal: stop });
        } catch {
          return false;
        }
        run.samplingStep += 1;
        const every = behaviour.livePreviewEveryNSteps;
        if (every > 0 && run.samplingStep % every === 0) {
          // The sampler's picture so far: the step's share of the way to the seed's colour.
          const share = (run.jobNo + run.samplingStep / run.samplingSteps) / run.jobCount;
          const [r, g, b] = colourForSeed(run.seed).map((c) => Math.round(c * share));
          run.livePreview = await sharp({ create: { width: run.width, height: run.height, channels: 3, background: { r: r!, g: g!, b: b! } } })
            .png()
            .toBuffer();
          run.livePreviewId += 1;
        }
        if (behaviour.dieMidRequest) {
          res.socket?.destroy();
          return true;
        }
      }
    }
    return false;
  }

  function seedsFor(requested: unknown, count: number): number[] {
    const base = typeof requested === 'number' && requested !== -1 ? requested : randomBytes(4).readUInt32BE() >>> 1;
    return Array.from({ length: count }, (_, i) =>
      behaviour.seeds === 'same' ? base : behaviour.seeds === 'random' ? randomBytes(4).readUInt32BE() >>> 1 : base + i,
    );
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    interrupts,
    tasks,
    currentTask: () => running?.task.id,
    nextTaskStarted: () => new Promise((resolve) => startWaiters.push(resolve)),
    setNextFailures(count, failure) {
      for (let i = 0; i < count; i += 1) failures.push(failure);
    },
    setBehaviour(patch) {
      behaviour = { ...behaviour, ...patch };
    },
    resetBehaviour() {
      behaviour = { ...DEFAULT_BEHAVIOUR };
      failures.length = 0;
    },
    async close() {
      closed.abort();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function progressOf(run: RunningTask): number {
  let progress = 0;
  if (run.jobCount > 0) progress += run.jobNo / run.jobCount;
  if (run.samplingSteps > 0 && run.jobCount > 0) progress += (1 / run.jobCount) * (run.samplingStep / run.samplingSteps);
  return Math.min(progress, 1);
}

async function decodeImage(value: unknown): Promise<Buffer> {
  if (typeof value !== 'string') throw httpException(500, 'Invalid encoded image');
  const payload = value.startsWith('data:image/') ? (value.split(';')[1]?.split(',')[1] ?? '') : value;
  const bytes = Buffer.from(payload, 'base64');
  try {
    await sharp(bytes).metadata();
  } catch {
    throw httpException(500, 'Invalid encoded image');
  }
  return bytes;
}

/**
 * The mask as A1111 reads it (modules/images.py create_binary_mask, "Round mask" on): an RGBA image whose
 * alpha is not all 255 is read by its alpha, anything else by PIL's luma (L = (299R + 587G + 114B) / 1000,
 * which also drops the alpha of a gray+alpha PNG); then > 128 → 255 (inpaint), else 0.
 */
export async function readMaskLikeA1111(png: Buffer): Promise<{ data: Buffer; width: number; height: number }> {
  const meta = await sharp(png).metadata();
  const { data, info } = await sharp(png).ensureAlpha().raw().toBuffer({ resolveWithObject: true });
  const pixels = info.width * info.height;
  const useAlpha = meta.channels === 4 && data.some((v, i) => i % 4 === 3 && v !== 255);
  const out = Buffer.alloc(pixels);
  for (let i = 0; i < pixels; i += 1) {
    const level = useAlpha
      ? data[i * 4 + 3]!
      : Math.floor((data[i * 4]! * 299 + data[i * 4 + 1]! * 587 + data[i * 4 + 2]! * 114) / 1000);
    out[i] = level > 128 ? 255 : 0;
  }
  return { data: out, width: info.width, height: info.height };
}

/**
 * img2img: the input stretched to the output size (resize_mode 0); the regenerated pixel is the seed's
 * colour mixed into the input by denoising_strength. With a mask, only the inpaint area is regenerated and
 * the rest is the input exactly, with A1111's overlay: blurred by mask_blur, then doubled and clipped.
 */
async function inpaint(init: Buffer, mask: Buffer | undefined, seed: number, width: number, height: number, body: Record<string, unknown>): Promise<Buffer> {
  const original = await sharp(init).resize(width, height, { fit: 'fill' }).removeAlpha().raw().toBuffer();
  const denoise = typeof body.denoising_strength === 'number' ? body.denoising_strength : 0.75;
  const colour = colourForSeed(seed);
  let weights: Buffer | undefined;
  if (mask) {
    const read = await readMaskLikeA1111(mask);
    if (body.inpainting_mask_invert === 1) for (let i = 0; i < read.data.length; i += 1) read.data[i] = 255 - read.data[i]!;
    const blur = typeof body.mask_blur === 'number' ? body.mask_blur : 4;
    let pipeline = sharp(read.data, { raw: { width: read.width, height: read.height, channels: 1 } }).resize(width, height, { fit: 'fill' });
    if (blur > 0) pipeline = pipeline.blur(Math.max(0.3, blur));
    const blurred = await pipeline.toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
    weights = Buffer.alloc(width * height);
    for (let i = 0; i < width * height; i += 1) weights[i] = Math.min(255, 2 * blurred.data[i * blurred.info.channels]!);
  }
  const out = Buffer.alloc(width * height * 3);
  for (let i = 0; i < width * height; i += 1) {
    const w = weights ? weights[i]! / 255 : 1;
    for (let c = 0; c < 3; c += 1) {
      const before = original[i * 3 + c]!;
      const regenerated = before * (1 - denoise) + colour[c]! * denoise;
      out[i * 3 + c] = Math.round(before * (1 - w) + regenerated * w);
    }
  }
  return sharp(out, { raw: { width, height, channels: 3 } }).png().toBuffer();
}

async function readText(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
