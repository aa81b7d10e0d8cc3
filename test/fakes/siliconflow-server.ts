/**
 * A fake SiliconFlow-style image API for adapter and end-to-end tests. It follows the hosted protocol
 * (shared/spec/backends.md): one JSON endpoint for generations and edits, inputs as data URLs in `image`,
 * `image2`, `image3`, results as short-lived URLs, `{code, message, data: null}` errors and an
 * `x-siliconcloud-trace-id` header on every API answer. Result URLs are served by this same server and
 * answer 404 once their time is up, so a client that downloads late is caught. Behaviour hooks make it
 * fail, stall, crash or hand out bad URLs on demand.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import sharp from 'sharp';
import { renderImage } from './openai-compatible-server.js';

export { colourForSeed, renderImage } from './openai-compatible-server.js';

/** SiliconFlow's documented code for an unknown model (its error-handling FAQ). */
export const CODE_MODEL_NOT_FOUND = 20012;
/**
 * Stand-in code for other parameter errors: SiliconFlow does not publish its table, so tests must not
 * depend on this value, only on the shape.
 */
export const CODE_INVALID_PARAMETER = 20015;
export const MAX_SEED = 9_999_999_999;

export interface FakeSiliconFlowOptions {
  /** Models the fake knows. @default ['Kwai-Kolors/Kolors', 'Qwen/Qwen-Image-Edit-2509'] */
  models?: string[];
  /** Models that honour batch_size; the others make one image whatever it says (as documented). @default ['Kwai-Kolors/Kolors'] */
  batchModels?: string[];
  /** When set, API calls without `Authorization: Bearer <key>` get 401. Result URLs need no key. */
  requireApiKey?: string;
}

export interface RecordedSiliconFlowRequest {
  method: string;
  /** Path including any query string. */
  path: string;
  headers: IncomingHttpHeaders;
  json?: unknown;
  /** The trace id this request was answered with (API calls only). */
  traceId?: string;
  /** The client went away before the response was complete. */
  disconnected: boolean;
}

export interface SiliconFlowFailure {
  status: number;
  /** Put into `{code, message, data: null}`. */
  code?: number;
  message?: string;
  /** Exact body instead: objects go out as JSON, strings as they are. */
  body?: unknown;
  headers?: Record<string, string>;
}

export interface FakeSiliconFlowBehaviour {
  /** Wait this long before answering image calls; ends early if the client disconnects. */
  delayMs: number;
  /** Never answer image calls (the request is still recorded). */
  hang: boolean;
  /** Read the request, then destroy the socket without a word: a crashed backend. */
  dieMidRequest: boolean;
  /** Send the headers and half of the body, then destroy the socket. */
  dieMidResponse: boolean;
  /** How long result URLs stay valid. 0 = already expired when handed out. @default 3_600_000 */
  urlTtlMs: number;
  /** Result URLs serve random bytes (200, image/png) instead of the picture. */
  garbageUrls: boolean;
  /** Wait this long before serving a result download; ends early if the client disconnects. */
  downloadDelayMs: number;
  /** Answer with this seed instead of the one asked for. */
  seedOverride: number | undefined;
}

export interface FakeSiliconFlowServer {
  /** Base URL including /v1. */
  readonly url: string;
  /** http://127.0.0.1:port */
  readonly origin: string;
  readonly requests: RecordedSiliconFlowRequest[];
  /** The largest number of result downloads that were in flight at once. */
  readonly maxConcurrentDownloads: number;
  /** Bytes served for each result URL name (`<token>.png`), for comparing with what the client got. */
  readonly files: ReadonlyMap<string, Buffer>;
  /** The next `count` API calls (not downloads) answer with this failure. */
  setNextFailures(count: number, failure: SiliconFlowFailure): void;
  setBehaviour(patch: Partial<FakeSiliconFlowBehaviour>): void;
  resetBehaviour(): void;
  /** Resolves with the next request whose client disconnects early. Call it before causing that. */
  nextDisconnect(): Promise<RecordedSiliconFlowRequest>;
  /** Image-generation calls received so far, their JSON bodies in order. */
  generationBodies(): Array<Record<string, unknown>>;
  close(): Promise<void>;
}

const DEFAULT_BEHAVIOUR: FakeSiliconFlowBehaviour = {
  delayMs: 0,
  hang: false,
  dieMidRequest: false,
  dieMidResponse: false,
  urlTtlMs: 60 * 60_000,
  garbageUrls: false,
  downloadDelayMs: 0,
  seedOverride: undefined,
};

class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

export async function startFakeSiliconFlowServer(options: FakeSiliconFlowOptions = {}): Promise<FakeSiliconFlowServer> {
  const models = options.models ?? ['Kwai-Kolors/Kolors', 'Qwen/Qwen-Image-Edit-2509'];
  const batchModels = new Set(options.batchModels ?? ['Kwai-Kolors/Kolors']);
  const requests: RecordedSiliconFlowRequest[] = [];
  const stored = new Map<string, { bytes: Buffer; expiresMs: number }>();
  const served = new Map<string, Buffer>();
  const failures: SiliconFlowFailure[] = [];
  const disconnectWaiters: Array<(r: RecordedSiliconFlowRequest) => void> = [];
  let behaviour: FakeSiliconFlowBehaviour = { ...DEFAULT_BEHAVIOUR };
  let origin = '';
  let downloadsInFlight = 0;
  let maxConcurrentDownloads = 0;

  function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    res.writeHead(status, {
      'content-type': typeof body === 'string' ? 'text/plain' : 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(text),
      ...headers,
    });
    res.end(text);
  }

  const errorBody = (code: number, message: string) => ({ code, message, data: null });

  const server = createServer((req, res) => {
    const record: RecordedSiliconFlowRequest = {
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
      const traceHeader = record.traceId !== undefined ? { 'x-siliconcloud-trace-id': record.traceId } : undefined;
      if (err instanceof ApiError) sendJson(res, err.status, errorBody(err.code, err.message), traceHeader);
      else sendJson(res, 500, errorBody(50000, err instanceof Error ? err.message : String(err)), traceHeader);
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse, record: RecordedSiliconFlowRequest): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    requests.push(record);
    const text = await readText(req);

    if (req.method === 'GET' && path.startsWith('/files/')) return serveFile(res, path.slice('/files/'.length));

    record.traceId = randomUUID();
    const trace = { 'x-siliconcloud-trace-id': record.traceId };
    if (options.requireApiKey !== undefined && req.headers.authorization !== `Bearer ${options.requireApiKey}`) {
      return sendJson(res, 401, 'Invalid token', trace);
    }
    const failure = failures.shift();
    if (failure) {
      const body = failure.body ?? errorBody(failure.code ?? 50000 + failure.status, failure.message ?? `fake failure ${failure.status}`);
      return sendJson(res, failure.status, body, { ...trace, ...(failure.headers ?? {}) });
    }
    if (req.method === 'GET' && path === '/v1/models') {
      return sendJson(res, 200, { object: 'list', data: models.map((id) => ({ id, object: 'model', created: 0, owned_by: '' })) }, trace);
    }
    if (req.method === 'POST' && path === '/v1/images/generations') {
      let parsed = true;
      try {
        record.json = JSON.parse(text);
      } catch {
        parsed = false;
      }
      if (behaviour.dieMidRequest) {
        req.socket.destroy();
        return;
      }
      if (behaviour.hang) return;
      if (behaviour.delayMs > 0 && !(await waitUnlessGone(res, behaviour.delayMs))) return;
      if (!(req.headers['content-type'] ?? '').startsWith('application/json')) {
        throw new ApiError(400, CODE_INVALID_PARAMETER, 'Content-Type must be application/json');
      }
      if (!parsed) throw new ApiError(400, CODE_INVALID_PARAMETER, 'request body is not valid JSON');
      const answer = await generate(record.json);
      const body = JSON.stringify(answer);
      if (behaviour.dieMidResponse) {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...trace });
        res.write(body.slice(0, Math.floor(body.length / 2)), () => res.socket?.destroy());
        return;
      }
      return sendJson(res, 200, answer, trace);
    }
    sendJson(res, 404, errorBody(40400, 'Not Found'), trace);
  }

  async function generate(json: unknown): Promise<Record<string, unknown>> {
    if (typeof json !== 'object' || json === null || Array.isArray(json)) {
      throw new ApiError(400, CODE_INVALID_PARAMETER, 'body must be a JSON object');
    }
    const body = json as Record<string, unknown>;
    if (typeof body.model !== 'string' || !models.includes(body.model)) {
      throw new ApiError(400, CODE_MODEL_NOT_FOUND, 'Model does not exist. Please check it carefully.');
    }
    if (typeof body.prompt !== 'string' || body.prompt === '') throw new ApiError(400, CODE_INVALID_PARAMETER, 'prompt is required');
    const batch = body.batch_size ?? 1;
    if (!Number.isInteger(batch) || (batch as number) < 1 || (batch as number) > 4) {
      throw new ApiError(400, CODE_INVALID_PARAMETER, `batch_size must be an integer from 1 to 4, got ${JSON.stringify(batch)}`);
    }
    if (body.seed !== undefined && (!Number.isInteger(body.seed) || (body.seed as number) < 0 || (body.seed as number) > MAX_SEED)) {
      throw new ApiError(400, CODE_INVALID_PARAMETER, `seed must be an integer from 0 to ${MAX_SEED}`);
    }
    const steps = body.num_inference_steps;
    if (steps !== undefined && (!Number.isInteger(steps) || (steps as number) < 1 || (steps as number) > 100)) {
      throw new ApiError(400, CODE_INVALID_PARAMETER, 'num_inference_steps must be an integer from 1 to 100');
    }
    const guidance = body.guidance_scale;
    if (guidance !== undefined && (typeof guidance !== 'number' || guidance < 0 || guidance > 20)) {
      throw new ApiError(400, CODE_INVALID_PARAMETER, 'guidance_scale must be a number from 0 to 20');
    }
    if (body.negative_prompt !== undefined && typeof body.negative_prompt !== 'string') {
      throw new ApiError(400, CODE_INVALID_PARAMETER, 'negative_prompt must be a string');
    }

    let size: { width: number; height: number } | undefined;
    if (body.image_size !== undefined) {
      const m = typeof body.image_size === 'string' ? /^(\d{2,5})x(\d{2,5})$/.exec(body.image_size) : null;
      if (!m) throw new ApiError(400, CODE_INVALID_PARAMETER, `image_size must look like 1024x1024, got ${JSON.stringify(body.image_size)}`);
      size = { width: Number(m[1]), height: Number(m[2]) };
    }
    const inputs = ['image', 'image2', 'image3'] as const;
    for (const [i, field] of inputs.entries()) {
      const value = body[field];
      if (value === undefined) continue;
      if (i > 0 && body[inputs[i - 1]!] === undefined) {
        throw new ApiError(400, CODE_INVALID_PARAMETER, `${field} given without ${inputs[i - 1]}`);
      }
      const meta = await inputMetadata(field, value);
      if (field === 'image' && size === undefined) size = meta;
    }
    size ??= { width: 1024, height: 1024 };

    const seed = behaviour.seedOverride ?? (body.seed as number | undefined) ?? randomBytes(4).readUInt32BE();
    const count = batchModels.has(body.model) ? (batch as number) : 1;
    const images: Array<{ url: string }> = [];
    for (let i = 0; i < count; i++) {
      const bytes = behaviour.garbageUrls ? randomBytes(256) : await renderImage(size.width, size.height, seed + i);
      const name = `${randomUUID()}.png`;
      stored.set(name, { bytes, expiresMs: Date.now() + behaviour.urlTtlMs });
      served.set(name, bytes);
      // Signed-URL style query, as object storage hands out; clients must not log it.
      images.push({ url: `${origin}/files/${name}?Expires=${Math.floor((Date.now() + behaviour.urlTtlMs) / 1000)}&Signature=${randomUUID()}` });
    }
    return { images, timings: { inference: 0.012 }, seed };
  }

  async function inputMetadata(field: string, value: unknown): Promise<{ width: number; height: number }> {
    const m = typeof value === 'string' ? /^data:image\/(?:png|jpeg|webp);base64,([A-Za-z0-9+/]+={0,2})$/.exec(value) : null;
    if (!m) throw new ApiError(400, CODE_INVALID_PARAMETER, `${field} must be a base64 image data URL`);
    const meta = await sharp(Buffer.from(m[1]!, 'base64'))
      .metadata()
      .catch(() => {
        throw new ApiError(400, CODE_INVALID_PARAMETER, `${field} is not a readable image`);
      });
    return { width: meta.width ?? 1024, height: meta.height ?? 1024 };
  }

  async function serveFile(res: ServerResponse, name: string): Promise<void> {
    downloadsInFlight += 1;
    maxConcurrentDownloads = Math.max(maxConcurrentDownloads, downloadsInFlight);
    try {
      if (behaviour.downloadDelayMs > 0 && !(await waitUnlessGone(res, behaviour.downloadDelayMs))) return;
      const file = stored.get(name);
      if (!file || Date.now() >= file.expiresMs) {
        // Object storage answers an expired signed URL with an XML error page, not the API's JSON.
        res.writeHead(404, { 'content-type': 'application/xml' });
        res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code></Error>');
        return;
      }
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': file.bytes.length });
      res.end(file.bytes);
    } finally {
      downloadsInFlight -= 1;
    }
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  origin = `http://127.0.0.1:${port}`;

  return {
    url: `${origin}/v1`,
    origin,
    requests,
    get maxConcurrentDownloads() {
      return maxConcurrentDownloads;
    },
    files: served,
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
    generationBodies() {
      return requests
        .filter((r) => r.method === 'POST' && r.path.startsWith('/v1/images/generations') && r.json !== undefined)
        .map((r) => r.json as Record<string, unknown>);
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function readText(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
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
