import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import express from 'express';
import { afterEach, describe, expect, it } from 'vitest';
import { Base64Image, Base64Images, jsonBody, sendJson } from '../../src/http/render.js';
import { BlobNotFoundError } from '../../src/images/blob-store.js';
import { FileBlobStore } from '../../src/images/file-blob-store.js';

const dirs: string[] = [];
const servers: Server[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  await Promise.all(servers.splice(0).map((server) => new Promise((resolve) => server.close(resolve))));
});

async function blobStore(): Promise<FileBlobStore> {
  const dir = mkdtempSync(path.join(tmpdir(), 'pixeld-render-'));
  dirs.push(dir);
  const blobs = new FileBlobStore(dir, 0);
  await blobs.init();
  return blobs;
}

/** Serves `{ b64_json }` for the image `next()` gives, with sendJson. */
async function serve(next: () => Base64Image): Promise<string> {
  const app = express();
  app.all('/', (_req, res) => sendJson(res, { b64_json: next() }));
  const server = app.listen(0, '127.0.0.1');
  servers.push(server);
  await new Promise((resolve) => server.once('listening', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
}

describe('jsonBody', () => {
  it('writes the same bytes as JSON.stringify, with base64 images spliced in', () => {
    const value = {
      note: 'quotes " and \\ and a newline\n, ünïcode',
      data: { data: [{ b64_json: new Base64Image(Buffer.from('iVBORw0KGgo=')) }, { url: 'http://x/y.png' }, { b64_json: new Base64Image(Buffer.from('AAAA')) }] },
      warnings: ['pixeld-b64-looks-like-a-marker-0'],
    };
    expect(jsonBody(value).toString('utf8')).toBe(JSON.stringify(value));
    expect(JSON.parse(jsonBody(value).toString('utf8')).data.data[0].b64_json).toBe('iVBORw0KGgo=');
  });

  it('serialises a Base64Image as its text outside jsonBody too', () => {
    expect(JSON.stringify({ b64_json: new Base64Image(Buffer.from('QUJD')) })).toBe('{"b64_json":"QUJD"}');
  });
});

describe('Base64Images', () => {
  it('keeps the text from the second read of a blob on, and at most maxBytes of it', async () => {
    const blobs = await blobStore();
    // Under made-up hashes, so that different bytes can stand under one name and show which read is cached.
    const a = 'a'.repeat(64);
    const b = 'b'.repeat(64);
    await blobs.putBuffer(Buffer.alloc(30, 1), a);
    await blobs.putBuffer(Buffer.alloc(30, 2), b);
    const images = new Base64Images(blobs, 50);
    expect((await images.get(a)).text.toString()).toBe(Buffer.alloc(30, 1).toString('base64'));
    // Read once, not kept: most images are read once, and keeping them only churns memory.
    await blobs.putBuffer(Buffer.alloc(30, 3), a);
    expect((await images.get(a)).text.toString()).toBe(Buffer.alloc(30, 3).toString('base64'));
    await blobs.removeUnlessStoredAfter(a, Number.POSITIVE_INFINITY);
    // Read twice: kept, so the file is not read again.
    expect((await images.get(a)).text.toString()).toBe(Buffer.alloc(30, 3).toString('base64'));
    await images.get(b);
    await images.get(b);
    // 40 + 40 bytes of text exceed 50: the least recently used entry (a) went, and its blob is gone.
    await expect(images.get(a)).rejects.toBeInstanceOf(BlobNotFoundError);
  });
});

describe('sendJson', () => {
  it('gives the buffer of an image read once back when the socket has its text, for the next image read once', async () => {
    const blobs = await blobStore();
    const [a, b] = [randomBytes(300_000), randomBytes(299_000)];
    const [shaA, shaB] = [(await blobs.putBuffer(a)).sha256, (await blobs.putBuffer(b)).sha256];
    const images = new Base64Images(blobs);
    const first = await images.get(shaA);
    const url = await serve(() => first);
    expect(await (await fetch(url)).json()).toEqual({ b64_json: a.toString('base64') });
    await new Promise((resolve) => setImmediate(resolve));
    const second = await images.get(shaB);
    expect(second.text.buffer).toBe(first.text.buffer);
    expect(second.text.toString('latin1')).toBe(b.toString('base64'));
  });

  it('gives it back on a HEAD request too, where no body is sent', async () => {
    const blobs = await blobStore();
    const [shaA, shaB] = [(await blobs.putBuffer(randomBytes(3_000))).sha256, (await blobs.putBuffer(randomBytes(3_000))).sha256];
    const images = new Base64Images(blobs);
    const first = await images.get(shaA);
    const res = await fetch(await serve(() => first), { method: 'HEAD' });
    expect(res.headers.get('content-length')).toBe(String(jsonBody({ b64_json: first }).length));
    expect((await images.get(shaB)).text.buffer).toBe(first.text.buffer);
  });

  it('never hands out again the text it keeps for images read twice', async () => {
    const blobs = await blobStore();
    const [shaA, shaB] = [(await blobs.putBuffer(randomBytes(3_000))).sha256, (await blobs.putBuffer(randomBytes(3_000))).sha256];
    const images = new Base64Images(blobs);
    await images.get(shaA);
    const kept = await images.get(shaA);
    expect(kept.sent).toBeUndefined();
    await fetch(await serve(() => kept));
    await new Promise((resolve) => setImmediate(resolve));
    expect((await images.get(shaB)).text.buffer).not.toBe(kept.text.buffer);
  });
});
