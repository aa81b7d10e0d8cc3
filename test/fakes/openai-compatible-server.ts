/**
 * A fake OpenAI-compatible image server for adapter tests and benchmarks. It speaks the wire protocol of
 * the real servers (shared/spec/backends.md), quirks included, and renders real PNGs with sharp so
 * callers can decode what they get. Behaviour hooks make it fail, stall or misbehave on demand.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import busboy from 'busboy';
import sharp, { type Sharp } from 'sharp';

export type FakeFlavor = 'sglang' | 'vllm-omni' | 'localai' | 'openai';

export interface FakeOpenAIServerOptions {
  flavor: FakeFlavor;
  /**
   * Fill images with noise so a 1024x1024 PNG weighs about as much as a real model output (~1.5 MB+)
   * instead of a few hundred bytes of solid colour. For benchmarks. @default false
   */
  noisy?: boolean;
  /** Model ids listed at GET /v1/models. @default ['fake-image-model'] */
  models?: string[];
  /** When set, /v1 requests without `Authorization: Bearer <key>` get 401. */
  requireApiKey?: string;
}

export interface RecordedFile {
  field: string;
  filename: string;
  mimeType: string;
  size: number;
  bytes: Buffer;
}

export interface RecordedRequest {
  method: string;
  /** Path including any query string. */
  path: string;
  headers: IncomingHttpHeaders;
  /** Parsed JSON body, for JSON requests. */
  json?: unknown;
  /** Multipart text fields by name, in arrival order (repeated names keep every value). */
  fields?: Record<string, string[]>;
  /** Multipart files in arrival order. */
  files?: RecordedFile[];
  /** The client went away before the response was complete. */
  disconnected: boolean;
}

export interface FailureSpec {
  status: number;
  /** Message put into the flavor's error shape. @default a generic text for the status */
  message?: string;
  /** Exact body instead of the flavor's shape: objects go out as JSON, strings as they are. */
  body?: unknown;
  headers?: Record<string, string>;
}

export interface FakeBehaviour {
  /** Wait this long before answering image calls; the wait ends early if the client disconnects. */
  delayMs: number;
  /** Return at most this many images whatever n asks for. */
  maxImagesReturned: number | undefined;
  /** `empty`: 200 with `data: []`; `missing`: 200 without `data`. */
  data: 'normal' | 'empty' | 'missing';
  /** Valid base64 of bytes that are no image. */
  garbageB64: boolean;
  /** 200 with a body that is not JSON. */
  invalidJson: boolean;
  /** Never answer image calls (the request is still recorded). */
  hang: boolean;
  /** Send headers and half of the body, then destroy the socket. */
  destroyMidResponse: boolean;
  /** Status served for result-URL downloads instead of the image (e.g. 404 for an expired link). */
  downloadStatus: number | undefined;
  /** Wait this long before serving a result-URL download; ends early if the client disconnects. */
  downloadDelayMs: number;
}

export interface FakeOpenAIServer {
  readonly flavor: FakeFlavor;
  /** Base URL including /v1. */
  readonly url: string;
  /** http://127.0.0.1:port */
  readonly origin: string;
  readonly requests: RecordedRequest[];
  /** The next `count` requests under /v1 fail with this answer (result downloads are not counted). */
  setNextFailures(count: number, failure: FailureSpec): void;
  setBehaviour(patch: Partial<FakeBehaviour>): void;
  resetBehaviour(): void;
  /**
   * Resolves with the next request whose client disconnects before its response is complete. Call it
   * before causing the disconnect: earlier ones are not replayed.
   */
  nextDisconnect(): Promise<RecordedRequest>;
  /** The body the flavor sends for an error with this status and message. */
  errorBody(status: number, message: string): unknown;
  close(): Promise<void>;
}

const DEFAULT_BEHAVIOUR: FakeBehaviour = {
  delayMs: 0,
  maxImagesReturned: undefined,
  data: 'normal',
  garbageB64: false,
  invalidJson: false,
  hang: false,
  destroyMidResponse: false,
  downloadStatus: undefined,
  downloadDelayMs: 0,
};

/** SGLang diffusion's old default when a request carries no seed. */
export const SGLANG_DEFAULT_SEED = 1024;

/** What OpenAI answers when its safety system blocks a prompt (openai-images.md). */
export const OPENAI_MODERATION_FAILURE: FailureSpec = {
  status: 400,
  body: {
    error: {
      message: 'Your request was rejected as a result of our safety system.',
      type: 'image_generation_user_error',
      param: null,
      code: 'moderation_blocked',
    },
  },
};

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly body?: unknown,
  ) {
    super(message);
  }
}

export async function startFakeOpenAIServer(options: FakeOpenAIServerOptions): Promise<FakeOpenAIServer> {
  const { flavor } = options;
  const models = options.models ?? ['fake-image-model'];
  const noisy = options.noisy ?? false;
  const requests: RecordedRequest[] = [];
  const stored = new Map<string, { bytes: Buffer; contentType: string }>();
  const failures: FailureSpec[] = [];
  const disconnectWaiters: Array<(r: RecordedRequest) => void> = [];
  let behaviour: FakeBehaviour = { ...DEFAULT_BEHAVIOUR };
  let origin = '';

  function errorBody(status: number, message: string): unknown {
    switch (flavor) {
      case 'sglang':
        return { detail: message };
      case 'vllm-omni':
        return { error: { message, type: status >= 500 ? 'InternalServerError' : 'BadRequestError', param: null, code: status } };
      case 'localai':
        return { error: { code: status, message, type: '' } };
      case 'openai':
        return {
          error: {
            message,
            type: status === 429 ? 'rate_limit_error' : status >= 500 ? 'server_error' : 'invalid_request_error',
            param: null,
            code: null,
          },
        };
    }
  }

  function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
      ...headers,
    });
    res.end(text);
  }

  function sendError(res: ServerResponse, status: number, message: string, body?: unknown): void {
    sendJson(res, status, body ?? errorBody(status, message));
  }

  function sendFailure(res: ServerResponse, failure: FailureSpec): void {
    const headers = failure.headers ?? {};
    if (typeof failure.body === 'string') {
      res.writeHead(failure.status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(failure.body), ...headers });
      res.end(failure.body);
      return;
    }
    const body = failure.body ?? errorBody(failure.status, failure.message ?? `fake failure ${failure.status}`);
    sendJson(res, failure.status, body, headers);
  }

  const server = createServer((req, res) => {
    const record: RecordedRequest = {
      method: req.method ?? 'GET',
      path: req.url ?? '/',
      headers: req.headers,
      disconnected: false,
    };
    res.on('close', () => {
      if (res.writableFinished) return;
      record.disconnected = true;
      for (const resolve of disconnectWaiters.splice(0)) resolve(record);
    });
    handle(req, res, record).catch((err: unknown) => {
      if (res.headersSent || res.destroyed) return;
      if (err instanceof HttpError) sendError(res, err.status, err.message, err.body);
      else sendError(res, 500, err instanceof Error ? err.message : String(err));
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse, record: RecordedRequest): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    requests.push(record);
    await readRequestBody(req, record);

    if (path.startsWith('/files/') && req.method === 'GET') return serveFile(res, path.slice('/files/'.length));

    if (options.requireApiKey !== undefined && req.headers.authorization !== `Bearer ${options.requireApiKey}`) {
      return sendError(res, 401, 'Incorrect API key provided.');
    }
    const failure = failures.shift();
    if (failure) return sendFailure(res, failure);

    if (req.method === 'GET' && path === '/v1/models') {
      return sendJson(res, 200, {
        object: 'list',
        data: models.map((id) => ({ id, object: 'model', created: 1_700_000_000, owned_by: flavor })),
      });
    }
    if (req.method === 'GET' && path === '/health' && flavor === 'sglang') return sendJson(res, 200, {});
    if (req.method === 'POST' && path === '/v1/images/generations') {
      return answerImages(res, () => generation(record));
    }
    if (req.method === 'POST' && path === '/v1/images/edits') {
      if (flavor === 'localai') {
        // LocalAI has no edits route; its router answers unknown routes with plain text.
        res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
        res.end(`Cannot POST ${path}`);
        return;
      }
      return answerImages(res, () => edit(record));
    }
    if (flavor === 'localai') {
      if (req.method === 'POST' && path === '/v1/images/inpainting') return answerImages(res, () => inpainting(record));
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(`Cannot ${req.method ?? 'GET'} ${path}`);
      return;
    }
    sendError(res, 404, 'Not Found');
  }

  async function serveFile(res: ServerResponse, name: string): Promise<void> {
    if (behaviour.downloadDelayMs > 0 && !(await waitUnlessGone(res, behaviour.downloadDelayMs))) return;
    if (behaviour.downloadStatus !== undefined) {
      res.writeHead(behaviour.downloadStatus, { 'content-type': 'text/plain' });
      res.end('not available');
      return;
    }
    const file = stored.get(name);
    if (!file) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': file.contentType, 'content-length': file.bytes.length });
    res.end(file.bytes);
  }

  interface RenderPlan {
    n: number;
    width: number;
    height: number;
    seed: number;
    format: 'png' | 'jpeg' | 'webp';
    responseFormat: 'b64_json' | 'url';
  }

  function planFrom(get: (key: string) => unknown, defaultSize: { width: number; height: number }): RenderPlan {
    const prompt = get('prompt');
    if (typeof prompt !== 'string' || prompt === '') {
      if (flavor === 'sglang') {
        throw new HttpError(422, 'Field required', {
          detail: [{ type: 'missing', loc: ['body', 'prompt'], msg: 'Field required', input: null }],
        });
      }
      throw new HttpError(400, 'prompt is required');
    }
    const n = toInt(get('n')) ?? 1;
    if (n < 1 || n > 10) throw new HttpError(400, `n must be between 1 and 10, got ${n}`);
    const sizeText = get('size');
    let { width, height } = defaultSize;
    if (typeof sizeText === 'string' && sizeText !== 'auto') {
      const m = /^(\d+)x(\d+)$/.exec(sizeText);
      if (!m) throw new HttpError(400, `invalid size ${sizeText}`);
      width = Number(m[1]);
      height = Number(m[2]);
    }
    const seed = toInt(get('seed')) ?? (flavor === 'sglang' ? SGLANG_DEFAULT_SEED : randomBytes(4).readUInt32BE());
    const askedFormat = get('response_format');
    let responseFormat: RenderPlan['responseFormat'];
    if (askedFormat === 'b64_json' || askedFormat === 'url') responseFormat = askedFormat;
    else if (askedFormat === undefined) responseFormat = flavor === 'sglang' || flavor === 'localai' ? 'url' : 'b64_json';
    else throw new HttpError(400, `invalid response_format ${String(askedFormat)}`);
    if (flavor === 'vllm-omni' && responseFormat === 'url') {
      throw new HttpError(400, "Only response_format 'b64_json' is supported");
    }
    const outputFormat = get('output_format');
    // Only OpenAI honours output_format; the open-source servers always write PNG.
    const format =
      flavor === 'openai' && (outputFormat === 'jpeg' || outputFormat === 'webp') ? outputFormat : 'png';
    return { n, width, height, seed, format, responseFormat };
  }

  async function generation(record: RecordedRequest): Promise<RenderPlan> {
    if (!isObject(record.json)) throw new HttpError(flavor === 'sglang' ? 422 : 400, 'body must be a JSON object');
    const body = record.json;
    return planFrom((k) => body[k], { width: 1024, height: 1024 });
  }

  async function edit(record: RecordedRequest): Promise<RenderPlan> {
    if (record.fields === undefined) throw new HttpError(400, 'edits take multipart/form-data');
    const fields = record.fields;
    const files = record.files ?? [];
    const images = files.filter((f) => f.field === 'image' || f.field === 'image[]');
    const first = images[0];
    if (!first) throw new HttpError(400, 'image is required');
    const firstMeta = await sharp(first.bytes).metadata().catch(() => {
      throw new HttpError(400, `image ${first.filename} is not a supported image`);
    });
    // SGLang ignores masks; vLLM-Omni reads mask_image; OpenAI checks its alpha mask against the first image.
    if (flavor === 'openai') {
      const mask = files.find((f) => f.field === 'mask' || f.field === 'mask[]');
      if (mask) {
        const m = await sharp(mask.bytes).metadata().catch(() => {
          throw new HttpError(400, 'mask must be a PNG');
        });
        if (m.format !== 'png' || !m.hasAlpha) throw new HttpError(400, 'mask must be a PNG with an alpha channel');
        if (m.width !== firstMeta.width || m.height !== firstMeta.height) {
          throw new HttpError(400, 'mask must have the same dimensions as the image');
        }
      }
    }
    return planFrom((k) => fields[k]?.[0], { width: firstMeta.width ?? 1024, height: firstMeta.height ?? 1024 });
  }

  /**
   * LocalAI's inpainting route: one `image` and a `mask` of its size, white = inpaint, both required; the
   * answer has the generations shape.
   */
  async function inpainting(record: RecordedRequest): Promise<RenderPlan> {
    if (record.fields === undefined) throw new HttpError(400, 'inpainting takes multipart/form-data');
    const fields = record.fields;
    const files = record.files ?? [];
    const image = files.find((f) => f.field === 'image');
    const mask = files.find((f) => f.field === 'mask');
    if (!image || !mask) throw new HttpError(400, 'image and mask are required');
    const imageMeta = await sharp(image.bytes).metadata().catch(() => {
      throw new HttpError(400, 'image is not a supported image');
    });
    const maskMeta = await sharp(mask.bytes).metadata().catch(() => {
      throw new HttpError(400, 'mask is not a supported image');
    });
    if (maskMeta.width !== imageMeta.width || maskMeta.height !== imageMeta.height) {
      throw new HttpError(400, 'mask must have the same dimensions as the image');
    }
    return planFrom((k) => fields[k]?.[0], { width: imageMeta.width ?? 512, height: imageMeta.height ?? 512 });
  }

  async function answerImages(res: ServerResponse, plan: () => Promise<RenderPlan>): Promise<void> {
    if (behaviour.hang) return;
    if (behaviour.delayMs > 0) {
      const stillThere = await waitUnlessGone(res, behaviour.delayMs);
      if (!stillThere) return;
    }
    const p = await plan();
    const count = Math.min(p.n, behaviour.maxImagesReturned ?? p.n);
    const data: Array<Record<string, unknown>> = [];
    for (let i = 0; i < count; i++) {
      // vLLM-Omni and LocalAI use the one seed of the call for every image: n copies of one picture.
      const seed = flavor === 'vllm-omni' || flavor === 'localai' ? p.seed : p.seed + i;
      const bytes = behaviour.garbageB64 ? randomBytes(64) : await renderImage(p.width, p.height, seed, p.format, noisy);
      if (p.responseFormat === 'b64_json') {
        data.push({ b64_json: bytes.toString('base64'), ...(flavor === 'localai' ? { index: i } : {}) });
      } else {
        const name = `${randomUUID()}.${p.format === 'jpeg' ? 'jpg' : p.format}`;
        stored.set(name, { bytes, contentType: `image/${p.format}` });
        data.push({ url: `${origin}/files/${name}`, ...(flavor === 'localai' ? { index: i } : {}) });
      }
    }
    const created = Math.floor(Date.now() / 1000);
    const body: Record<string, unknown> = { created };
    if (behaviour.data === 'normal') body.data = data;
    else if (behaviour.data === 'empty') body.data = [];
    if (flavor === 'sglang') {
      Object.assign(body, { id: randomUUID(), inference_time_s: 0.01, peak_memory_mb: 20480.5 });
    } else if (flavor === 'localai') {
      body.id = randomUUID();
    } else if (flavor === 'openai') {
      Object.assign(body, { output_format: p.format, size: `${p.width}x${p.height}`, quality: 'high', background: 'opaque' });
    }

    if (behaviour.invalidJson) {
      const text = '{"created": 1, "data": [{"b64_json": "iVBOR';
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
      return;
    }
    if (behaviour.destroyMidResponse) {
      const text = JSON.stringify(body);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.write(text.slice(0, Math.floor(text.length / 2)), () => res.socket?.destroy());
      return;
    }
    sendJson(res, 200, body, { 'x-request-id': `req_${randomUUID()}` });
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  origin = `http://127.0.0.1:${port}`;

  return {
    flavor,
    url: `${origin}/v1`,
    origin,
    requests,
    setNextFailures(count, failure) {
      for (let i = 0; i < count; i++) failures.push(failure);
    },
    setBehaviour(patch) {
      behaviour = { ...behaviour, ...patch };
    },
    resetBehaviour() {
      behaviour = { ...DEFAULT_BEHAVIOUR };
      failures.length = 0;
    },
    nextDisconnect() {
      return new Promise((resolve) => disconnectWaiters.push(resolve));
    },
    errorBody,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function readRequestBody(req: IncomingMessage, record: RecordedRequest): Promise<void> {
  const type = req.headers['content-type'] ?? '';
  if (type.startsWith('multipart/form-data')) {
    const fields: Record<string, string[]> = {};
    const files: RecordedFile[] = [];
    await new Promise<void>((resolve, reject) => {
      const parser = busboy({ headers: req.headers, limits: { fieldSize: 64 * 1024 * 1024 } });
      parser.on('field', (name, value) => {
        (fields[name] ??= []).push(value);
      });
      parser.on('file', (field, stream, info) => {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => {
          const bytes = Buffer.concat(chunks);
          files.push({ field, filename: info.filename ?? '', mimeType: info.mimeType, size: bytes.length, bytes });
        });
      });
      parser.on('close', () => resolve());
      parser.on('error', (err) => reject(new HttpError(400, `invalid multipart body: ${String(err)}`)));
      req.pipe(parser);
    });
    record.fields = fields;
    record.files = files;
    return;
  }
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  if (chunks.length === 0) return;
  const text = Buffer.concat(chunks).toString('utf8');
  if (type.startsWith('application/json')) {
    try {
      record.json = JSON.parse(text);
    } catch {
      throw new HttpError(400, 'body is not valid JSON');
    }
  }
}

/** Resolves true after `ms`, or false as soon as the client disconnects. */
function waitUnlessGone(res: ServerResponse, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const onClose = (): void => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      res.off('close', onClose);
      resolve(true);
    }, ms);
    res.once('close', onClose);
  });
}

const renderCache = new Map<string, Buffer>();
const RENDER_CACHE_ENTRIES = 32;

/**
 * A picture that is a function of its seed: a solid colour, or that colour plus low-amplitude noise when
 * `noisy` (the noise keeps zlib from shrinking the PNG to nothing, like real model output).
 */
export async function renderImage(
  width: number,
  height: number,
  seed: number,
  format: 'png' | 'jpeg' | 'webp' = 'png',
  noisy = false,
): Promise<Buffer> {
  const key = `${width}x${height}:${seed}:${format}:${noisy}`;
  const cached = renderCache.get(key);
  if (cached) return cached;
  const [r, g, b] = colourForSeed(seed);
  let image: Sharp;
  if (noisy) {
    const raw = Buffer.alloc(width * height * 3);
    let state = (seed ^ 0x9e3779b9) >>> 0 || 1;
    for (let i = 0; i < raw.length; i += 3) {
      // xorshift32: cheap, seeded, and random enough to defeat deflate.
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      state >>>= 0;
      raw[i] = (r & 0xe0) | (state & 0x1f);
      raw[i + 1] = (g & 0xe0) | ((state >>> 5) & 0x1f);
      raw[i + 2] = (b & 0xe0) | ((state >>> 10) & 0x1f);
    }
    image = sharp(raw, { raw: { width, height, channels: 3 } });
  } else {
    image = sharp({ create: { width, height, channels: 3, background: { r, g, b } } });
  }
  const bytes =
    format === 'jpeg' ? await image.jpeg().toBuffer() : format === 'webp' ? await image.webp().toBuffer() : await image.png().toBuffer();
  if (renderCache.size >= RENDER_CACHE_ENTRIES) {
    const oldest = renderCache.keys().next().value;
    if (oldest !== undefined) renderCache.delete(oldest);
  }
  renderCache.set(key, bytes);
  return bytes;
}

/** The colour renderImage paints for a seed, so tests can check which seed an image came from. */
export function colourForSeed(seed: number): [number, number, number] {
  let h = (seed >>> 0) ^ 0x5bd1e995;
  h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
  h = Math.imul(h ^ (h >>> 12), 0x297a2d39);
  h ^= h >>> 15;
  return [h & 0xff, (h >>> 8) & 0xff, (h >>> 16) & 0xff];
}

function toInt(value: unknown): number | undefined {
  if (typeof value === 'number' && Number.isInteger(value)) return value;
  if (typeof value === 'string' && /^-?\d+$/.test(value)) return Number(value);
  return undefined;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
