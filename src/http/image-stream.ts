import type { Response } from 'express';
import type { PixeldError } from '../errors.js';
import { NotAnImageError, normalizeOutputImage, type NormalizedImage } from '../images/normalize-output.js';
import type { JobKind, JobParams } from '../jobs/model.js';
import type { PartialImageSink } from '../jobs/partial-images.js';
import { jsonBody, type ImagesResponse } from './render.js';

/**
 * `stream: true` on the image endpoints: a `text/event-stream` of OpenAI's image events, as its `openai`
 * client reads them (`event:` and `data:` lines; a data object with `error` is thrown as an APIError).
 * Partial images are previews: converted to the requested output_format, never stored, signed or billed.
 */

/** A comment line is sent after this long without an event, so proxies and clients keep the stream open. @default 15_000 */
export const SSE_HEARTBEAT_MS = 15_000;
/**
 * A client that takes nothing of a pending write for this long is gone, or holding the socket on purpose: the
 * response is destroyed, freeing the socket and the event it held. Two heartbeats' time. @default 30_000
 */
export const SSE_STALL_MS = 2 * SSE_HEARTBEAT_MS;

export function partialImageEventName(kind: JobKind): string {
  return kind === 'generation' ? 'image_generation.partial_image' : 'image_edit.partial_image';
}

export function completedEventName(kind: JobKind): string {
  return kind === 'generation' ? 'image_generation.completed' : 'image_edit.completed';
}

/**
 * One response's event stream. Events are written one after the other in the order they were sent, each
 * waiting for the socket to drain before the next (a slow reader holds them here, not in Node's buffers).
 * Writes after the client left are dropped; a client that reads nothing for stallMs is cut off.
 */
export class SseStream {
  private tail: Promise<void> = Promise.resolve();
  private heartbeat: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly res: Response,
    private readonly heartbeatMs: number = SSE_HEARTBEAT_MS,
    private readonly stallMs: number = SSE_STALL_MS,
  ) {}

  /** Sends the status line and headers at once: the caller learns the job id before any image exists. */
  open(headers: Record<string, string>): void {
    for (const [name, value] of Object.entries(headers)) this.res.setHeader(name, value);
    this.res.status(200);
    this.res.setHeader('Content-Type', 'text/event-stream; charset=utf-8');
    this.res.setHeader('Cache-Control', 'no-cache');
    // nginx buffers proxied answers unless told not to; a buffered stream would arrive all at the end.
    this.res.setHeader('X-Accel-Buffering', 'no');
    this.res.flushHeaders();
    this.armHeartbeat();
  }

  /**
   * Queues an event whose data is produced by `data` (undefined: nothing to send after all). An `id` is the
   * event's place in a resumable stream: the client sends the last one it saw back as Last-Event-ID.
   */
  send(event: string, data: () => Promise<Buffer | undefined>, id?: number): Promise<void> {
    return this.enqueue(async () => {
      const body = await data();
      if (body === undefined) return;
      const head = id === undefined ? `event: ${event}\ndata: ` : `id: ${id}\nevent: ${event}\ndata: `;
      await this.write(Buffer.concat([Buffer.from(head), body, Buffer.from('\n\n')]));
    });
  }

  /** An error after the stream began: the openai client throws it as an APIError with this body's error. */
  sendError(err: PixeldError): Promise<void> {
    return this.send('error', async () => Buffer.from(JSON.stringify({ type: 'error', ...err.toBody() })));
  }

  /** Resolves once everything queued so far is written (or dropped), then ends the response. */
  async end(): Promise<void> {
    await this.tail;
    this.stopHeartbeat();
    this.closed = true;
    if (!this.res.destroyed) this.res.end();
  }

  /** Stops writing: the client went away. */
  abandon(): void {
    this.stopHeartbeat();
    this.closed = true;
  }

  private enqueue(step: () => Promise<void>): Promise<void> {
    const next = this.tail.then(step);
    // One failed event (an image that could not be read) must not stop the ones after it.
    this.tail = next.catch(() => undefined);
    return next;
  }

  private async write(bytes: Buffer): Promise<void> {
    if (this.closed || this.res.destroyed) return;
    this.armHeartbeat();
    if (this.res.write(bytes)) return;
    await new Promise<void>((resolve) => {
      // Without this a reader that stops reading would hold the socket, the event and the stream's caller forever.
      const stalled = setTimeout(() => this.res.destroy(), this.stallMs);
      const done = () => {
        clearTimeout(stalled);
        this.res.off('drain', done);
        this.res.off('close', done);
        resolve();
      };
      this.res.on('drain', done);
      this.res.on('close', done);
    });
  }

  private armHeartbeat(): void {
    this.stopHeartbeat();
    this.heartbeat = setTimeout(() => {
      void this.enqueue(() => this.write(Buffer.from(': keep-alive\n\n')));
    }, this.heartbeatMs);
    this.heartbeat.unref();
  }

  private stopHeartbeat(): void {
    if (this.heartbeat) clearTimeout(this.heartbeat);
    this.heartbeat = undefined;
  }
}

/**
 * The sink a streaming request hands the runner before its job exists. Previews that arrive before the
 * stream listens (the job may start the moment it is inserted) wait here for it.
 */
export class StreamedPartialImages implements PartialImageSink {
  private readonly waiting: Array<{ image: Uint8Array; index: number }> = [];
  private listener: ((image: Uint8Array, index: number) => void) | undefined;

  constructor(readonly max: number) {}

  deliver(image: Uint8Array, index: number): void {
    if (this.listener) this.listener(image, index);
    else this.waiting.push({ image, index });
  }

  listen(listener: (image: Uint8Array, index: number) => void): void {
    this.listener = listener;
    for (const { image, index } of this.waiting.splice(0)) listener(image, index);
  }
}

/** The limits a preview is converted under: as the final image's, so a hostile backend cannot do more harm here. */
export interface PartialImageLimits {
  maxPixels: number;
}

/**
 * A partial image event's data, or undefined when the backend's preview is not an image we can convert
 * (it is a preview: the stream goes on without it). `size`, `quality` and `background` are the request's,
 * as in OpenAI's event; the preview itself may be smaller (ComfyUI renders latent-sized previews).
 */
export async function partialImageEvent(
  kind: JobKind,
  params: JobParams,
  preview: Uint8Array,
  index: number,
  limits: PartialImageLimits,
  nowMs: number,
): Promise<Buffer | undefined> {
  const converted = await convertedPreview(params, preview, limits);
  if (converted === undefined) return undefined;
  return Buffer.from(
    JSON.stringify({
      type: partialImageEventName(kind),
      b64_json: converted.bytes.toString('base64'),
      partial_image_index: index,
      size: params.size,
      quality: params.quality,
      background: params.background,
      output_format: params.outputFormat,
      created_at: Math.floor(nowMs / 1000),
    }),
  );
}

/** A backend's preview in the job's output format, or undefined when it is not an image we can convert. */
export async function convertedPreview(params: JobParams, preview: Uint8Array, limits: PartialImageLimits): Promise<NormalizedImage | undefined> {
  try {
    return await normalizeOutputImage(preview, {
      outputFormat: params.outputFormat,
      outputCompression: params.outputCompression,
      background: params.background,
      maxPixels: limits.maxPixels,
    });
  } catch (err) {
    if (err instanceof NotAnImageError) return undefined;
    throw err;
  }
}

/**
 * The completed event's data, from the same ImagesResponse the non-streamed answer sends (the job's signed
 * image and its resolved size, quality and background). pixeld charges per image, not per token: `usage` is
 * there because OpenAI's event has it, with no tokens counted (the charge is in the job's receipt).
 */
export function completedEvent(kind: JobKind, response: ImagesResponse): Buffer {
  const first = response.data[0];
  if (first === undefined || !('b64_json' in first)) throw new Error('a streamed job has one base64 image');
  try {
    return jsonBody({
      type: completedEventName(kind),
      b64_json: first.b64_json,
      size: response.size,
      quality: response.quality,
      background: response.background,
      output_format: response.output_format,
      created_at: response.created,
      usage: { input_tokens: 0, input_tokens_details: { text_tokens: 0, image_tokens: 0 }, output_tokens: 0, total_tokens: 0 },
    });
  } finally {
    // jsonBody copied the text: its buffer may be used again.
    first.b64_json.sent?.();
  }
}
