import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ModelCatalog } from '../../src/backends/catalog.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { PixeldError } from '../../src/errors.js';
import { parseImageRequest, type ImageRequestContext } from '../../src/http/image-request.js';
import type { FetchRemoteImageDeps } from '../../src/images/fetch-remote-image.js';
import { startTestDaemon, tempDir, testConfig, type TestDaemon } from '../helpers/daemon.js';
import { startRemoteImageHost, stubResolver, TEST_HOST_ADDRESS, testRemoteImageDeps, type RemoteImageHost } from '../helpers/remote-image-host.js';

/**
 * JSON edits whose image_url is https: refused as before unless limits.fetchRemoteImages is on; on, downloaded
 * and then checked like any input image. The request parser gets the test resolver and CA; the daemon runs
 * with the system resolver and the real public-address check, so every URL sent to it names this machine and
 * is refused before a connection. The fetcher's own cases are in test/images/fetch-remote-image.test.ts.
 */

let png: Buffer;
let mask: Buffer;
const dirs: string[] = [];
const hosts: RemoteImageHost[] = [];

beforeAll(async () => {
  png = await sharp({ create: { width: 64, height: 48, channels: 3, background: '#c83c5a' } }).png().toBuffer();
  mask = await sharp({ create: { width: 64, height: 48, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } }).png().toBuffer();
});
afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.close()));
});
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

async function imageHost(): Promise<RemoteImageHost> {
  const host = await startRemoteImageHost((req, res) => res.end(req.url === '/mask.png' ? mask : png));
  hosts.push(host);
  return host;
}

function context(limits: ConfigInput['limits'], remoteImages?: FetchRemoteImageDeps): ImageRequestContext {
  const config = testConfig({ limits });
  const tmp = tempDir();
  dirs.push(config.dataDir, tmp);
  let n = 0;
  return { catalog: new ModelCatalog(config.models), limits: config.limits, tmpPath: () => path.join(tmp, `in-${n++}`), remoteImages };
}

const jsonBody = (value: unknown) => ({ kind: 'json' as const, sha256: '0'.repeat(64), bytes: 0, value });

async function refusal(promise: Promise<unknown>): Promise<PixeldError> {
  const err = await promise.then(
    () => new Error('expected a refusal'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PixeldError);
  return err as PixeldError;
}

describe('parseImageRequest with an https image_url', () => {
  it('refuses it as before while limits.fetchRemoteImages is off (the default), without a lookup', async () => {
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const ctx = context({}, testRemoteImageDeps(resolver));
    expect(ctx.limits.fetchRemoteImages).toBe(false);
    const err = await refusal(parseImageRequest('edit', jsonBody({ prompt: 'p', images: [{ image_url: 'https://images.example.test/cat.png' }] }), ctx));
    expect(err).toMatchObject({ code: 'invalid_image', param: 'images[0]' });
    expect(resolver.calls).toEqual([]);
  });

  it('downloads images and mask when limits.fetchRemoteImages is on, and checks them like any input image', async () => {
    const host = await imageHost();
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const ctx = context({ fetchRemoteImages: true }, testRemoteImageDeps(resolver));
    const base = `https://images.example.test:${host.port}`;
    const request = await parseImageRequest(
      'edit',
      jsonBody({ prompt: 'p', images: [{ image_url: `${base}/cat.png` }], mask: { image_url: `${base}/mask.png` } }),
      ctx,
    );
    expect(request.images.map((i) => i.info)).toEqual([{ mediaType: 'image/png', width: 64, height: 48, hasAlpha: false }]);
    expect(request.mask?.info).toMatchObject({ width: 64, height: 48, hasAlpha: true });
    expect(readFileSync(request.images[0]!.tmpPath)).toEqual(png);
    expect(host.requests.map((r) => r.path)).toEqual(['/cat.png', '/mask.png']);
  });

  it('holds a download to limits.maxInputImageBytes', async () => {
    const host = await imageHost();
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const ctx = context({ fetchRemoteImages: true, maxInputImageBytes: png.length - 1 }, testRemoteImageDeps(resolver));
    const err = await refusal(
      parseImageRequest('edit', jsonBody({ prompt: 'p', images: [{ image_url: `https://images.example.test:${host.port}/cat.png` }] }), ctx),
    );
    expect(err).toMatchObject({ code: 'payload_too_large', status: 413, param: 'images[0]' });
  });

  it('stops a download when the request closes (the context signal)', async () => {
    const host = await startRemoteImageHost((_req, res) => {
      res.writeHead(200);
      res.write(png.subarray(0, 8));
    });
    hosts.push(host);
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const gone = new AbortController();
    const ctx = { ...context({ fetchRemoteImages: true, remoteImageTimeoutMs: 30_000 }, testRemoteImageDeps(resolver)), signal: gone.signal };
    const parsing = parseImageRequest('edit', jsonBody({ prompt: 'p', images: [{ image_url: `https://images.example.test:${host.port}/cat.png` }] }), ctx);
    setTimeout(() => gone.abort(), 200);
    const err = await refusal(parsing);
    expect(err).toMatchObject({ code: 'image_fetch_failed', param: 'images[0]', message: expect.stringContaining('the request was closed') });
  });

  it('refuses a download that is not an image with invalid_image', async () => {
    const host = await startRemoteImageHost((_req, res) => res.end('<html>not found</html>'));
    hosts.push(host);
    const resolver = stubResolver({ 'images.example.test': [TEST_HOST_ADDRESS] });
    const ctx = context({ fetchRemoteImages: true }, testRemoteImageDeps(resolver));
    const err = await refusal(
      parseImageRequest('edit', jsonBody({ prompt: 'p', images: [{ image_url: `https://images.example.test:${host.port}/cat.png` }] }), ctx),
    );
    expect(err).toMatchObject({ code: 'invalid_image', param: 'images[0]', message: expect.stringContaining('not a png, jpeg or webp') });
    expect(host.requests).toHaveLength(1);
  });
});

describe('limits.fetchRemoteImages on, in the daemon', () => {
  let t: TestDaemon;
  let host: RemoteImageHost;
  beforeAll(async () => {
    t = await startTestDaemon({
      config: {
        limits: { fetchRemoteImages: true },
        backends: [{ id: 'reference', type: 'reference', latencyMsPerImage: 0 }],
        models: [{ id: 'pix-1', backend: 'reference', capabilities: ['generation', 'edit'], sizes: ['64x64'] }],
      },
    });
    host = await startRemoteImageHost((_req, res) => res.end(png));
  });
  afterAll(async () => {
    await t?.close();
    await host?.close();
  });

  async function edit(imageUrl: string): Promise<{ status: number; headers: Headers; json: { data?: unknown[]; error?: unknown } }> {
    const res = await fetch(`${t.url}/v1/images/edits`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'p', images: [{ image_url: imageUrl }] }),
    });
    return { status: res.status, headers: res.headers, json: (await res.json()) as { data?: unknown[]; error?: unknown } };
  }

  it.each(['127.0.0.1', 'localhost', '[::ffff:127.0.0.1]'])('refuses https://%s with 400 image_url_forbidden and never connects', async (name) => {
    const res = await edit(`https://${name}:${host.port}/cat.png`);
    expect(res.status).toBe(400);
    expect(res.json).toEqual({
      error: {
        message: expect.stringContaining('not a public internet address'),
        type: 'invalid_request_error',
        param: 'images[0]',
        code: 'image_url_forbidden',
      },
    });
    expect(res.headers.get('x-should-retry')).toBe('false');
    expect(host.connections).toBe(0);
  });

  it('refuses http with 400 image_url_forbidden', async () => {
    const res = await edit('http://images.example.test/cat.png');
    expect(res.json.error).toMatchObject({ code: 'image_url_forbidden', param: 'images[0]' });
  });

  it('still takes data: URLs', async () => {
    const res = await edit(`data:image/png;base64,${png.toString('base64')}`);
    expect(res.status).toBe(200);
    expect(res.json.data).toHaveLength(1);
  });
});
