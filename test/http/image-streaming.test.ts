import { createHash } from 'node:crypto';
import { createServer, get as httpGet, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { hashMessage, recoverAddress } from 'ethers';
import express from 'express';
import OpenAI, { APIError, toFile } from 'openai';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendError } from '../../src/backends/errors.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { SseStream } from '../../src/http/image-stream.js';
import type { ReceiptJson } from '../../src/tee/receipt.js';
import { verifyJob } from '../../src/tee/verifier.js';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/**
 * `stream: true` on the image endpoints: OpenAI's event stream, read by the official `openai` client and by
 * hand; the streamed job is signed and billed as any other; partial images come only as far as asked.
 */

const MODEL = 'ctl-model';
const sha256 = (bytes: Uint8Array | string) => createHash('sha256').update(bytes).digest('hex');

let daemon: TestDaemon | undefined;
afterEach(async () => {
  await daemon?.close();
  daemon = undefined;
});

/** The reference backend (no previews), or a backend the test answers by hand. */
async function start(options: { controlled?: boolean } = {}) {
  const backend = new ControlledBackend('ctl');
  daemon = await startTestDaemon({
    config: {
      backends: [{ id: 'ctl', type: 'reference', concurrency: 1, latencyMsPerImage: 0 } as ConfigInput['backends'][number]],
      models: [{ id: MODEL, backend: 'ctl', capabilities: ['generation', 'edit'], sizes: ['64x64', '128x128'], maxN: 4 }],
    },
    backends: options.controlled ? new Map([['ctl', backend]]) : undefined,
  });
  const client = new OpenAI({ baseURL: `${daemon.url}/v1`, apiKey: 'sk-test-dummy', maxRetries: 0, timeout: 20_000 });
  return { url: daemon.url, backend, client, d: daemon };
}

interface SseEvent {
  event: string | undefined;
  data: Record<string, any>;
}

/** An event stream's text as OpenAI's client reads it: `event:` and `data:` lines, a blank line ends each event. */
function parseSse(text: string): { events: SseEvent[]; comments: string[] } {
  const events: SseEvent[] = [];
  const comments: string[] = [];
  for (const block of text.split('\n\n')) {
    if (block.trim() === '') continue;
    let event: string | undefined;
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments.push(line);
      else if (line.startsWith('event: ')) event = line.slice('event: '.length);
      else if (line.startsWith('data: ')) data.push(line.slice('data: '.length));
    }
    if (data.length > 0) events.push({ event, data: JSON.parse(data.join('\n')) as Record<string, any> });
  }
  return { events, comments };
}

async function streamRaw(url: string, path: string, bodyText: string) {
  const res = await fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: bodyText });
  return { res, ...parseSse(await res.text()) };
}

async function signatureOf(url: string, jobId: string) {
  const res = await fetch(`${url}/v1/signature/${jobId}`);
  expect(res.status).toBe(200);
  return (await res.json()) as { text: string; signature: string; signing_address: string; receipt: ReceiptJson };
}

async function pollStatus(url: string, jobId: string): Promise<Record<string, any>> {
  return (await (await fetch(`${url}/v1/async/jobs/${jobId}`)).json()) as Record<string, any>;
}

async function until<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 5_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function solidPng(width: number, height: number, r: number): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: { r, g: 40, b: 200 } } }).png().toBuffer();
}

describe('stream: true with the official openai client', () => {
  it('images.generate streams image_generation.completed with the signed, billed image', async () => {
    const { client, url, d } = await start();
    const { data: stream, response } = await client.images
      .generate({ model: MODEL, prompt: 'a lighthouse at dusk', size: '64x64', stream: true, partial_images: 2 })
      .withResponse();
    expect(response.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    const jobId = response.headers.get('zg-res-key')!;
    expect(jobId).toMatch(/^job_[0-9a-f]{32}$/);
    expect(response.headers.get('x-receipt-signer')).toBe(d.daemon.tee.address);

    const events = [];
    for await (const event of stream) events.push(event);
    // The reference backend renders no previews: the completed event alone.
    expect(events.map((e) => e.type)).toEqual(['image_generation.completed']);
    const completed = events[0]!;
    if (completed.type !== 'image_generation.completed') throw new Error('unreachable');
    expect(completed).toMatchObject({ size: '64x64', quality: 'high', background: 'opaque', output_format: 'png' });
    expect(completed.usage).toEqual({ input_tokens: 0, input_tokens_details: { text_tokens: 0, image_tokens: 0 }, output_tokens: 0, total_tokens: 0 });
    expect(completed.created_at).toBeGreaterThan(1_700_000_000);
    const image = Buffer.from(completed.b64_json, 'base64');
    expect(await sharp(image).metadata()).toMatchObject({ format: 'png', width: 64, height: 64 });

    // Signed and billed like a non-streamed answer: one image, the model's price, the key the stream named.
    const sig = await signatureOf(url, jobId);
    expect(sig.receipt.image_sha256).toEqual([sha256(image)]);
    expect(sig.receipt.images).toBe(1);
    expect(sig.receipt.fee_wei).toBe(sig.receipt.price_per_image_wei);
    expect(recoverAddress(hashMessage(sig.receipt.text), sig.receipt.signature)).toBe(d.daemon.tee.address);
    expect((await pollStatus(url, jobId)).status).toBe('completed');
  });

  it('images.edit (multipart) streams image_edit.completed', async () => {
    const { client } = await start();
    const stream = await client.images.edit({
      model: MODEL,
      prompt: 'make it winter',
      image: await toFile(await solidPng(64, 64, 120), 'in.png', { type: 'image/png' }),
      size: '64x64',
      output_format: 'webp',
      stream: true,
    });
    const events = [];
    for await (const event of stream) events.push(event);
    expect(events.map((e) => e.type)).toEqual(['image_edit.completed']);
    const completed = events[0]!;
    expect(completed.output_format).toBe('webp');
    expect((await sharp(Buffer.from(completed.b64_json, 'base64')).metadata()).format).toBe('webp');
  });

  it('sends partial images from the backend, no more than partial_images, spread over the job, before the completed one', async () => {
    const { client, backend } = await start({ controlled: true });
    const streaming = client.images.generate({
      model: MODEL,
      prompt: 'previews',
      size: '64x64',
      output_format: 'jpeg',
      stream: true,
      partial_images: 2,
    });
    const call = await backend.nextCall();
    expect(call.options.onPartialImage).toBeTypeOf('function');
    const preview = (r: number) => solidPng(16, 16, r);
    // Before a third of the job: not yet. At 40 %: the first; at 50 %: still one; at 70 %: the second; then no more.
    call.options.onProgress(20);
    call.options.onPartialImage!(await preview(10));
    call.options.onProgress(40);
    call.options.onPartialImage!(await preview(40));
    call.options.onProgress(50);
    call.options.onPartialImage!(await preview(50));
    call.options.onProgress(70);
    call.options.onPartialImage!(await preview(70));
    call.options.onProgress(90);
    call.options.onPartialImage!(await preview(90));
    await call.succeed();

    const events = [];
    for await (const event of await streaming) events.push(event);
    expect(events.map((e) => e.type)).toEqual([
      'image_generation.partial_image',
      'image_generation.partial_image',
      'image_generation.completed',
    ]);
    const partials = events.filter((e) => e.type === 'image_generation.partial_image');
    expect(partials.map((e) => e.partial_image_index)).toEqual([0, 1]);
    for (const [i, partial] of partials.entries()) {
      expect(partial).toMatchObject({ size: '64x64', quality: 'high', background: 'auto', output_format: 'jpeg' });
      // Converted to the requested format; the preview sent at 40 % first, the one at 70 % second.
      const bytes = Buffer.from(partial.b64_json, 'base64');
      const { data } = await sharp(bytes).raw().toBuffer({ resolveWithObject: true });
      expect((await sharp(bytes).metadata()).format).toBe('jpeg');
      expect(Math.abs(data[0]! - [40, 70][i]!)).toBeLessThanOrEqual(3);
    }
  });

  it('asks the backend for no previews when none are wanted', async () => {
    const { url, backend } = await start({ controlled: true });
    const plain = fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'no stream', size: '64x64' }),
    });
    const first = await backend.nextCall();
    expect(first.options.onPartialImage).toBeUndefined();
    await first.succeed();
    expect((await plain).status).toBe(200);

    const zero = streamRaw(url, '/v1/images/generations', JSON.stringify({ model: MODEL, prompt: 'stream, no partials', size: '64x64', stream: true }));
    const second = await backend.nextCall();
    expect(second.options.onPartialImage).toBeUndefined();
    await second.succeed();
    expect((await zero).events.map((e) => e.event)).toEqual(['image_generation.completed']);
  });

  it('a job that fails after the stream began ends with an error event the client throws', async () => {
    const { client, backend } = await start({ controlled: true });
    const streaming = client.images.generate({ model: MODEL, prompt: 'doomed', size: '64x64', stream: true });
    const call = await backend.nextCall();
    call.fail(new BackendError('ctl', 'rejected', 'the model refused this prompt'));
    const stream = await streaming;
    const seen: unknown[] = [];
    let thrown: unknown;
    try {
      for await (const event of stream) seen.push(event);
    } catch (err) {
      thrown = err;
    }
    expect(seen).toEqual([]);
    expect(thrown).toBeInstanceOf(APIError);
    expect((thrown as APIError).error).toEqual({
      message: 'the backend failed: the model refused this prompt',
      type: 'upstream_error',
      param: null,
      code: 'upstream_error',
    });
  });
});

describe('stream: true on the wire', () => {
  it('answers text/event-stream with the job id up front, and the image verifies like a non-streamed one', async () => {
    const { url, d } = await start();
    // Odd spacing on purpose: the receipt covers the bytes sent.
    const bodyText = `{"model":"${MODEL}",  "prompt":"a fox", "size":"64x64", "stream":true, "partial_images":1}`;
    const { res, events } = await streamRaw(url, '/v1/images/generations', bodyText);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    expect(res.headers.get('cache-control')).toBe('no-cache');
    expect(res.headers.get('x-accel-buffering')).toBe('no');
    expect(res.headers.get('x-receipt-signer')).toBe(d.daemon.tee.address);
    const jobId = res.headers.get('zg-res-key')!;
    expect(res.headers.get('x-job-id')).toBe(jobId);
    expect(events).toHaveLength(1);
    expect(events[0]!.event).toBe('image_generation.completed');
    expect(events[0]!.data.type).toBe('image_generation.completed');

    const image = Buffer.from(events[0]!.data.b64_json as string, 'base64');
    const report = await verifyJob({ baseUrl: url, jobId, requestBody: Buffer.from(bodyText), images: [image], expectedModel: MODEL, allowInsecure: true });
    expect(report.checks.filter((c) => !c.ok)).toEqual([]);
    expect(report.ok).toBe(true);
    const sig = await signatureOf(url, jobId);
    expect(sig.receipt.request_sha256).toBe(sha256(bodyText));
  });

  it('a client that disconnects cancels its job, as a sync request does', async () => {
    const { url, backend } = await start({ controlled: true });
    const gone = new AbortController();
    const res = await fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'abandoned', size: '64x64', stream: true, partial_images: 1 }),
      signal: gone.signal,
    });
    expect(res.status).toBe(200);
    const jobId = res.headers.get('zg-res-key')!;
    const call = await backend.nextCall();
    gone.abort();
    await until(async () => (call.options.signal.aborted ? true : undefined), 'the backend call to be aborted');
    const status = await until(async () => {
      const body = await pollStatus(url, jobId);
      return body.status === 'failed' ? body : undefined;
    }, 'the job to end');
    expect(status.errorCode).toBe('job_cancelled');
    expect(backend.aborted).toEqual(['abandoned']);
  });

  it('refuses bad stream parameters with 400 in the OpenAI shape, before any job exists', async () => {
    const { url, backend } = await start({ controlled: true });
    const cases: Array<{ path: string; body: Record<string, unknown>; param: string; code: string }> = [
      { path: '/v1/images/generations', body: { stream: true, partial_images: 4 }, param: 'partial_images', code: 'invalid_request' },
      { path: '/v1/images/generations', body: { stream: true, partial_images: -1 }, param: 'partial_images', code: 'invalid_request' },
      { path: '/v1/images/generations', body: { stream: true, partial_images: 1.5 }, param: 'partial_images', code: 'invalid_request' },
      { path: '/v1/images/generations', body: { stream: true, partial_images: 'two' }, param: 'partial_images', code: 'invalid_request' },
      { path: '/v1/images/generations', body: { partial_images: 2 }, param: 'partial_images', code: 'invalid_request' },
      { path: '/v1/images/generations', body: { stream: true, n: 2 }, param: 'n', code: 'invalid_n' },
      { path: '/v1/images/generations', body: { stream: true, response_format: 'url' }, param: 'response_format', code: 'invalid_request' },
      { path: '/v1/async/images/generations', body: { stream: true }, param: 'stream', code: 'unsupported_parameter' },
      { path: '/v1/images/generations?async=true', body: { stream: true }, param: 'stream', code: 'unsupported_parameter' },
    ];
    for (const c of cases) {
      const res = await fetch(`${url}${c.path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: MODEL, prompt: 'p', size: '64x64', ...c.body }),
      });
      expect(res.status, JSON.stringify(c.body)).toBe(400);
      const body = (await res.json()) as { error: Record<string, unknown> };
      expect(body.error, JSON.stringify(c.body)).toMatchObject({ type: 'invalid_request_error', param: c.param, code: c.code });
      expect(typeof body.error.message).toBe('string');
    }
    // partial_images 0 without a stream asks for nothing and is accepted, as the SDK may send it.
    const zero = fetch(`${url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: 'p', size: '64x64', partial_images: 0 }),
    });
    await (await backend.nextCall()).succeed();
    expect((await zero).status).toBe(200);
    expect(backend.calls).toHaveLength(1);
  });
});

describe('SseStream', () => {
  let server: Server | undefined;
  afterEach(async () => {
    server?.closeAllConnections();
    await new Promise((resolve) => server?.close(resolve));
    server = undefined;
  });

  it('sends a comment heartbeat while nothing else is sent, and events in the order they were queued', async () => {
    const app = express();
    app.get('/events', (_req, res) => {
      const stream = new SseStream(res, 50);
      stream.open({ 'X-Test': 'yes' });
      // The first event's data is slow to make: the second still follows it.
      void stream.send('first', async () => {
        await new Promise((r) => setTimeout(r, 30));
        return Buffer.from('{"n":1}');
      });
      void stream.send('second', async () => Buffer.from('{"n":2}'));
      void stream.send('skipped', async () => undefined);
      setTimeout(() => {
        void stream.send('last', async () => Buffer.from('{"n":3}')).then(() => stream.end());
      }, 300);
    });
    server = createServer(app);
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/events`);
    expect(res.headers.get('x-test')).toBe('yes');
    const { events, comments } = parseSse(await res.text());
    expect(events.map((e) => [e.event, e.data.n])).toEqual([
      ['first', 1],
      ['second', 2],
      ['last', 3],
    ]);
    // 270 ms without events after the second one: heartbeats 50 ms apart (at least two, on a busy machine too).
    expect(comments.length).toBeGreaterThanOrEqual(2);
    expect(new Set(comments)).toEqual(new Set([': keep-alive']));
  });

  it('holds further events while the client does not read (the socket must drain first), and sends them all once it does', async () => {
    const EVENTS = 6;
    const written: number[] = [];
    let allSent: Promise<unknown> | undefined;
    const app = express();
    app.get('/events', (_req, res) => {
      const stream = new SseStream(res);
      stream.open({});
      const sends = Array.from({ length: EVENTS }, (_, i) =>
        stream.send('big', async () => Buffer.from(JSON.stringify({ i, pad: 'x'.repeat(4 * 1024 * 1024) }))).then(() => written.push(i)),
      );
      allSent = Promise.all(sends).then(() => stream.end());
    });
    server = createServer(app);
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    const response = await new Promise<IncomingMessage>((resolve) => httpGet(`http://127.0.0.1:${port}/events`, resolve));
    response.pause();
    await new Promise((r) => setTimeout(r, 300));
    // 24 MiB queued, nothing read: the stream stopped well short of writing it all into Node's buffers.
    expect(written.length).toBeLessThan(EVENTS);
    const chunks: Buffer[] = [];
    response.on('data', (c: Buffer) => chunks.push(c));
    response.resume();
    await new Promise((resolve) => response.on('end', resolve));
    await allSent;
    expect(written).toEqual([0, 1, 2, 3, 4, 5]);
    expect(parseSse(Buffer.concat(chunks).toString('utf8')).events.map((e) => e.data.i)).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('cuts off a client that reads nothing for stallMs: the response is destroyed and the stream ends', async () => {
    let ended: Promise<unknown> | undefined;
    let serverClosed: Promise<boolean> | undefined;
    const app = express();
    app.get('/events', (_req, res) => {
      serverClosed = new Promise((resolve) => res.on('close', () => resolve(res.destroyed && !res.writableFinished)));
      const stream = new SseStream(res, 15_000, 300);
      stream.open({});
      ended = Promise.all([
        stream.send('big', async () => Buffer.from(JSON.stringify({ pad: 'x'.repeat(8 * 1024 * 1024) }))),
        stream.send('after', async () => Buffer.from('{}')),
      ]).then(() => stream.end());
    });
    server = createServer(app);
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    const response = await new Promise<IncomingMessage>((resolve) => httpGet(`http://127.0.0.1:${port}/events`, resolve));
    response.pause();
    const started = Date.now();
    expect(await serverClosed).toBe(true);
    await ended;
    expect(Date.now() - started).toBeLessThan(10_000);
    response.destroy();
  });
});
