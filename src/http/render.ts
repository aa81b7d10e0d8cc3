import { randomBytes } from 'node:crypto';
import type { Response } from 'express';
import { PixeldError } from '../errors.js';
import { base64Length, encodeBase64 } from '../images/base64.js';
import { BlobNotFoundError, type BlobStore } from '../images/blob-store.js';
import { formatOf } from '../images/sniff.js';
import { isExpired, type Job, type JobResult } from '../jobs/model.js';

/**
 * The bodies this daemon answers with: the OpenAI ImagesResponse, and the two async job shapes that
 * routers poll (0G's and theRouter's). A job's response is rebuilt from its stored result on each read;
 * the base64 text of its images comes from a bounded cache, and `sendJson` splices it into the body
 * without JSON.stringify scanning and re-encoding megabytes that never need escaping.
 */

/** One image's base64 text (ASCII bytes) inside a response body. */
export class Base64Image {
  /**
   * @param sent called by `sendJson` once the socket is done with `text` (or the body goes nowhere), when
   * its buffer may be written again; text without it is never written again.
   */
  constructor(
    readonly text: Buffer,
    readonly sent?: () => void,
  ) {}

  /** Inside `jsonBody`: a marker it replaces with the bytes; anywhere else: the text itself. */
  toJSON(): string {
    if (splicing) {
      splicing.push(this);
      return `${MARKER}${splicing.length - 1}`;
    }
    return this.text.toString('latin1');
  }
}

/** The images of the body `jsonParts` is writing; set only while its JSON.stringify runs (synchronously). */
let splicing: Base64Image[] | undefined;
/** Random per process and never sent, so no other string in a body (a prompt, a warning) can pass for a marker. */
const MARKER = `pixeld-b64-${randomBytes(12).toString('hex')}-`;

/** JSON.stringify(value) as bytes, with every Base64Image copied in as it is. */
export function jsonBody(value: unknown): Buffer {
  return Buffer.concat(jsonParts(value).map((part) => (part instanceof Base64Image ? part.text : part)));
}

/** The same bytes as jsonBody, in pieces: the images' text is not copied again. */
function jsonParts(value: unknown): Array<Buffer | Base64Image> {
  const images: Base64Image[] = [];
  splicing = images;
  let text: string;
  try {
    text = JSON.stringify(value);
  } finally {
    splicing = undefined;
  }
  if (images.length === 0) return [Buffer.from(text)];
  const parts: Array<Buffer | Base64Image> = [];
  let from = 0;
  images.forEach((image, i) => {
    const at = text.indexOf(`"${MARKER}${i}"`, from);
    parts.push(Buffer.from(text.slice(from, at + 1)), image);
    from = at + 1 + MARKER.length + String(i).length;
  });
  parts.push(Buffer.from(text.slice(from)));
  return parts;
}

/** res.json for bodies that may hold images. */
export function sendJson(res: Response, value: unknown): void {
  const parts = jsonParts(value);
  const bytes = (part: Buffer | Base64Image) => (part instanceof Base64Image ? part.text : part);
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Content-Length', String(parts.reduce((n, part) => n + bytes(part).length, 0)));
  const head = res.req.method === 'HEAD';
  for (const part of parts) {
    const image = part instanceof Base64Image ? part : undefined;
    if (head) image?.sent?.();
    // The callback runs once the socket has the bytes, or on an error; on a connection already gone, never.
    else if (image?.sent) res.write(image.text, image.sent);
    else res.write(bytes(part));
  }
  res.end();
}

/** Blobs remembered as read once, oldest forgotten first: 64 bytes of hash each. */
const READ_ONCE_REMEMBERED = 4096;

/** Spare buffers kept for the text of images read once, and the largest kept: at most 32 MiB. */
const SPARE_BUFFERS = 4;
const SPARE_BUFFER_MAX_BYTES = 8 * 1024 * 1024;
const SPARE_BUFFER_STEP_BYTES = 1024 * 1024;

/** Bytes of base64 text kept for re-reads of finished jobs. @default 32 MiB (about 15 images of 1.5 MB) */
export const BASE64_CACHE_BYTES = 32 * 1024 * 1024;

/**
 * Base64 text of stored images, by sha256. Blobs never change (they are named by their hash), so an entry
 * is never stale; the least recently used go first beyond `maxBytes`. Callers check the job has not
 * expired before asking, as they did before reading the file.
 */
export class Base64Images {
  private readonly entries = new Map<string, Buffer>();
  private readonly loading = new Map<string, Promise<Buffer>>();
  /**
   * Blobs read once lately. Text is kept from a blob's second read on: most images are read once (a sync
   * answer, the poll that finds a job done), and caching those only churned megabytes through the heap,
   * which V8 pays for in full collections (issue #7's sync path).
   */
  private readonly readOnce = new Set<string>();
  private bytes = 0;

  /**
   * Text of images read once, back from the sockets that sent them. A fresh multi-MB buffer per answer
   * cost the kernel a zeroed page per 4 KiB (npm start maps every block of 1 MiB and more on its own) and
   * drew V8's full collections, which count new buffers against the heap's limit (issue 14's sync path).
   */
  private readonly spareBuffers: Buffer[] = [];

  constructor(
    private readonly blobs: BlobStore,
    private readonly maxBytes: number = BASE64_CACHE_BYTES,
  ) {}

  /**
   * Rejects with BlobNotFoundError when the blob is gone. The text of an image read for the first time
   * lies in a reused buffer: send it once, with `sendJson`.
   */
  async get(sha256: string): Promise<Base64Image> {
    const cached = this.entries.get(sha256);
    if (cached) {
      this.entries.delete(sha256);
      this.entries.set(sha256, cached);
      return new Base64Image(cached);
    }
    const loading = this.loading.get(sha256);
    if (loading) return new Base64Image(await loading);
    if (this.readOnce.delete(sha256)) {
      // Read before: this text is kept, and shared with whoever asks for it while it loads.
      const load = this.blobs.read(sha256).then((bytes) => encodeBase64(bytes));
      this.loading.set(sha256, load);
      void load.then(
        (text) => this.keep(sha256, text),
        () => undefined,
      ).finally(() => this.loading.delete(sha256));
      return new Base64Image(await load);
    }
    this.rememberRead(sha256);
    const bytes = await this.blobs.read(sha256);
    const buffer = this.spareBuffer(base64Length(bytes.length));
    let givenBack = false;
    return new Base64Image(encodeBase64(bytes, buffer), () => {
      if (givenBack) return;
      givenBack = true;
      this.giveBack(buffer);
    });
  }

  private spareBuffer(length: number): Buffer {
    const at = this.spareBuffers.findIndex((buffer) => buffer.length >= length);
    if (at >= 0) return this.spareBuffers.splice(at, 1)[0]!;
    // Rounded up, so that the next image, a little larger, fits too.
    return Buffer.allocUnsafeSlow(Math.ceil(length / SPARE_BUFFER_STEP_BYTES) * SPARE_BUFFER_STEP_BYTES);
  }

  private giveBack(buffer: Buffer): void {
    if (this.spareBuffers.length < SPARE_BUFFERS && buffer.length <= SPARE_BUFFER_MAX_BYTES) this.spareBuffers.push(buffer);
  }

  private rememberRead(sha256: string): void {
    this.readOnce.add(sha256);
    if (this.readOnce.size > READ_ONCE_REMEMBERED) this.readOnce.delete(this.readOnce.values().next().value as string);
  }

  private keep(sha256: string, text: Buffer): void {
    if (text.length > this.maxBytes || this.entries.has(sha256)) return;
    this.entries.set(sha256, text);
    this.bytes += text.length;
    for (const [key, value] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(key);
      this.bytes -= value.length;
    }
  }
}

export interface ImagesResponse {
  created: number;
  data: Array<{ b64_json: Base64Image } | { url: string }>;
  background: 'transparent' | 'opaque';
  output_format: 'png' | 'jpeg' | 'webp';
  size: string;
  quality: 'low' | 'medium' | 'high';
}

export function fileUrl(job: Job, result: JobResult, index: number): string {
  const image = result.images[index]!;
  return `${job.baseUrl}/v1/files/${job.id}/${result.fileToken}/${index}.${formatOf(image.mediaType)}`;
}

export async function renderImagesResponse(job: Job, images: Base64Images, nowMs: number): Promise<ImagesResponse> {
  const result = job.result;
  if (job.status !== 'completed' || result === undefined) throw new Error(`job ${job.id} has no result`);
  if (isExpired(job, nowMs)) throw expiredError(job);
  const data: ImagesResponse['data'] = [];
  for (const [index, image] of result.images.entries()) {
    if (job.params.responseFormat === 'url') {
      data.push({ url: fileUrl(job, result, index) });
      continue;
    }
    try {
      data.push({ b64_json: await images.get(image.sha256) });
    } catch (err) {
      if (err instanceof BlobNotFoundError) throw expiredError(job);
      throw err;
    }
  }
  return {
    created: result.created,
    data,
    background: result.background,
    output_format: result.outputFormat,
    size: result.size,
    quality: result.quality,
  };
}

export function expiredError(job: Job): PixeldError {
  return new PixeldError('job_expired', `job ${job.id} has expired; its result was deleted`);
}

/** 0G's poll shape: four statuses; a cancelled job reads as failed with its reason. */
export function zeroGStatus(job: Job): 'pending' | 'processing' | 'completed' | 'failed' {
  return job.status === 'cancelled' ? 'failed' : job.status;
}

export function zeroGPollBody(job: Job, response: ImagesResponse | undefined, progress?: number): Record<string, unknown> {
  const body: Record<string, unknown> = {
    jobId: job.id,
    status: zeroGStatus(job),
    createdAt: new Date(job.createdMs).toISOString(),
    updatedAt: new Date(job.updatedMs).toISOString(),
  };
  if (job.status === 'processing' && progress !== undefined) body.progress = progress;
  if (job.status === 'failed' || job.status === 'cancelled') {
    body.errorMessage = job.error?.message ?? 'failed';
    body.errorCode = job.error?.code ?? 'internal_error';
  }
  if (response) body.data = response;
  if (job.result && job.result.images.length < job.params.n) {
    body.imagesRequested = job.params.n;
    body.imagesDelivered = job.result.images.length;
  }
  // What the backend could not honour (an ignored mask, a shared seed): the OpenAI body has no place for it.
  if (job.result && job.result.warnings.length > 0) body.warnings = job.result.warnings;
  return body;
}

export type TheRouterStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'expired';

export function theRouterStatus(job: Job, nowMs: number): TheRouterStatus {
  switch (job.status) {
    case 'pending':
      return 'queued';
    case 'processing':
      return 'running';
    case 'completed':
      return isExpired(job, nowMs) ? 'expired' : 'succeeded';
    case 'failed':
      return 'failed';
    case 'cancelled':
      return 'cancelled';
  }
}

/**
 * theRouter's job object, as its docs and published scripts read it: `polling_url` to poll, and once the
 * job has succeeded `unsigned_urls`, one link per image (the links `response_format: "url"` gives,
 * whatever format the job asked for) beside the OpenAI response in `result`.
 */
export function theRouterJobBody(job: Job, nowMs: number, response: ImagesResponse | undefined, progress?: number): Record<string, unknown> {
  const status = theRouterStatus(job, nowMs);
  const body: Record<string, unknown> = {
    id: job.id,
    object: 'image_job',
    status,
    model: job.model,
    created_at: Math.floor(job.createdMs / 1000),
    updated_at: Math.floor(job.updatedMs / 1000),
    polling_url: `${job.baseUrl}/v1/jobs/${job.id}`,
  };
  if (job.expiresMs !== undefined) body.expires_at = Math.floor(job.expiresMs / 1000);
  if (job.status === 'processing' && progress !== undefined) body.progress = progress;
  if (job.status === 'failed' || job.status === 'cancelled') {
    body.error = { code: job.error?.code ?? 'internal_error', message: job.error?.message ?? 'failed' };
  }
  if (status === 'succeeded' && job.result) {
    const result = job.result;
    body.unsigned_urls = result.images.map((_, index) => fileUrl(job, result, index));
  }
  if (response) body.result = response;
  if (job.result && job.result.warnings.length > 0) body.warnings = job.result.warnings;
  return body;
}
