import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import net from 'node:net';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/**
 * Refusals that cost the daemon nothing (issue 12 §7): an unauthenticated or rate-limited caller is
 * answered from its headers alone, before a byte of its body is read, and the connection is closed so the
 * body is not drained either; n above a minute of images is a 400 no client retries.
 */

const API_KEY = 'sk-cheap-refusals-0123456789';
const ONE_HUNDRED_MB = 100 * 1024 * 1024;

let t: TestDaemon;

beforeAll(async () => {
  t = await startTestDaemon({
    config: {
      auth: { mode: ['api-key'], apiKeys: [{ owner: 'router-x', sha256: createHash('sha256').update(API_KEY).digest('hex') }] },
      rateLimits: { requestsPerMinute: 1, imagesPerMinute: 4 },
      backends: [{ id: 'reference', type: 'reference', latencyMsPerImage: 0 }],
    },
  });
});

afterAll(async () => {
  await t?.close();
});

interface HeadersOnlyAnswer {
  status: number | undefined;
  head: string;
  /** The server closed the connection after answering (rather than waiting for the body). */
  closed: boolean;
}

/**
 * Sends a request head announcing a 100 MB body and never sends the body. A daemon that reads the body
 * first never answers; one that answers and keeps the connection waits for the body: both time out here.
 */
function headersOnly(path: string, headers: Record<string, string>): Promise<HeadersOnlyAnswer> {
  const head =
    `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${ONE_HUNDRED_MB}\r\n` +
    Object.entries(headers)
      .map(([name, value]) => `${name}: ${value}\r\n`)
      .join('') +
    '\r\n';
  return new Promise<HeadersOnlyAnswer>((resolve) => {
    const socket = net.connect(Number(new URL(t.url).port), '127.0.0.1', () => socket.write(head));
    let received = '';
    const done = (closed: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      const headEnd = received.indexOf('\r\n\r\n');
      const status = /^HTTP\/1\.1 (\d{3})/.exec(received)?.[1];
      resolve({ status: status === undefined ? undefined : Number(status), head: received.slice(0, Math.max(0, headEnd)), closed });
    };
    const timer = setTimeout(() => done(false), 3_000);
    socket.on('data', (data: Buffer) => {
      received += data.toString('latin1');
    });
    socket.on('error', () => undefined);
    socket.on('end', () => done(true));
  });
}

const header = (head: string, name: string) => new RegExp(`\r\n${name}: ([^\r]*)`, 'i').exec(head)?.[1];

describe('refused before the body is read', () => {
  it.each(['/v1/images/edits', '/v1/proxy/images/generations', '/v1/async/images/edits', '/v1/jobs/job_00000000000000000000000000000000/cancel'])(
    'an unauthenticated 100 MB upload to %s: 401 from the headers, and the connection closed',
    async (path) => {
      const answer = await headersOnly(path, { 'Content-Type': 'multipart/form-data; boundary=x' });
      expect({ status: answer.status, closed: answer.closed }).toEqual({ status: 401, closed: true });
      expect(header(answer.head, 'connection')).toBe('close');
    },
  );

  it('a rate-limited caller’s 100 MB upload: 429 with Retry-After from the headers, and the connection closed', async () => {
    const first = await fetch(`${t.url}/v1/async/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` },
      body: JSON.stringify({ prompt: 'the one request of this minute', size: '256x256' }),
    });
    expect(first.status).toBe(202);
    const answer = await headersOnly('/v1/images/edits', {
      'Content-Type': 'multipart/form-data; boundary=x',
      Authorization: `Bearer ${API_KEY}`,
    });
    expect({ status: answer.status, closed: answer.closed }).toEqual({ status: 429, closed: true });
    expect(Number(header(answer.head, 'retry-after'))).toBeGreaterThanOrEqual(1);
    expect(header(answer.head, 'x-ratelimit-remaining')).toBe('0');
    expect(header(answer.head, 'connection')).toBe('close');
  });
});

describe('n above the images a minute allows', () => {
  it('is a 400 invalid_n on n that no client retries, not a 429', async () => {
    const d = await startTestDaemon({
      config: { rateLimits: { requestsPerMinute: 100, imagesPerMinute: 2 }, backends: [{ id: 'reference', type: 'reference', latencyMsPerImage: 0 }] },
    });
    try {
      const res = await fetch(`${d.url}/v1/async/images/generations`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'three at once', size: '256x256', n: 3 }),
      });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: unknown }).error).toMatchObject({ code: 'invalid_n', param: 'n', type: 'invalid_request_error' });
      expect(res.headers.get('x-should-retry')).toBe('false');
      expect(res.headers.get('retry-after')).toBeNull();
    } finally {
      await d.close();
    }
  });
});

describe('a refusal after the upload was read', () => {
  it('removes the uploaded files: an edit over the images a minute allows leaves nothing in the temp dir', async () => {
    const d = await startTestDaemon({
      config: { rateLimits: { requestsPerMinute: 100, imagesPerMinute: 2 }, backends: [{ id: 'reference', type: 'reference', latencyMsPerImage: 0 }] },
    });
    try {
      const png = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#336699' } }).png().toBuffer();
      const edit = (n: number) => {
        const form = new FormData();
        form.set('prompt', 'a refused edit');
        form.set('size', '256x256');
        form.set('n', String(n));
        form.set('image', new Blob([png], { type: 'image/png' }), 'in.png');
        return fetch(`${d.url}/v1/async/images/edits`, { method: 'POST', body: form });
      };
      expect((await edit(2)).status).toBe(202);
      const refused = await edit(1);
      expect(refused.status).toBe(429);
      expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('rate_limit_exceeded');
      expect(await readdir(d.daemon.blobs.tmpDir)).toEqual([]);
    } finally {
      await d.close();
    }
  });
});
