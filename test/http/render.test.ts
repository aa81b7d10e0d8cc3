import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Base64Image, Base64Images, jsonBody } from '../../src/http/render.js';
import { BlobNotFoundError } from '../../src/images/blob-store.js';
import { FileBlobStore } from '../../src/images/file-blob-store.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

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
    const dir = mkdtempSync(path.join(tmpdir(), 'pixeld-render-'));
    dirs.push(dir);
    const blobs = new FileBlobStore(dir, 0);
    await blobs.init();
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
