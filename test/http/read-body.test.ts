import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Request, Response } from 'express';
import { describe, expect, it } from 'vitest';
import { readImageRequestBody, type BodyLimits } from '../../src/http/read-body.js';

setFlagsFromString('--expose-gc');
/** A full collection, from a fresh context that sees the flag just set. */
const collectGarbage = runInNewContext('gc') as () => void;

const limits: BodyLimits = { maxBodyBytes: 64 * 1024 * 1024, maxFileBytes: 1024, maxFiles: 1, tmpDir: '/nonexistent' };
const noResponse = {} as Response;

/** A JSON request whose body arrives in `count` chunks, each made by `chunkAt` when the reader asks for it. */
function jsonRequest(count: number, chunkAt: (index: number) => Promise<Buffer> | Buffer): Request {
  let next = 0;
  const request = Object.assign(
    new Readable({
      async read() {
        if (next === count) {
          request.complete = true;
          this.push(null);
          return;
        }
        this.push(await chunkAt(next++));
      },
    }),
    { headers: { 'content-type': 'application/json' }, complete: false },
  );
  return request as unknown as Request;
}

describe('JSON bodies', () => {
  it('decode and hash the same when multibyte characters are split across chunks', async () => {
    const raw = Buffer.from(JSON.stringify({ prompt: 'Grüße, 東京の夜 🌃, naïve café 𝄞', size: '64x64' }));
    const body = await readImageRequestBody(jsonRequest(raw.length, (i) => raw.subarray(i, i + 1)), noResponse, limits);
    expect(body).toEqual({
      kind: 'json',
      sha256: createHash('sha256').update(raw).digest('hex'),
      bytes: raw.length,
      value: JSON.parse(raw.toString('utf8')),
    });
  });

  it('are not held as raw chunks while the rest arrives: each chunk can be collected once it is decoded', async () => {
    const CHUNK_BYTES = 256 * 1024;
    const CHUNKS = 12;
    const chunks: Array<WeakRef<Buffer>> = [];
    let mostAlive = 0;
    const request = jsonRequest(CHUNKS, async (i) => {
      // Before making the next chunk, see how many of those already read are still reachable.
      await nextTurn();
      collectGarbage();
      mostAlive = Math.max(mostAlive, chunks.filter((ref) => ref.deref() !== undefined).length);
      const chunk = i === 0 ? Buffer.from('{"prompt":"') : i === CHUNKS - 1 ? Buffer.from('"}') : Buffer.alloc(CHUNK_BYTES, 'é');
      chunks.push(new WeakRef(chunk));
      return chunk;
    });
    const body = await readImageRequestBody(request, noResponse, limits);
    expect(body.kind === 'json' && (body.value as { prompt: string }).prompt).toBe('é'.repeat(((CHUNKS - 2) * CHUNK_BYTES) / 2));
    // The chunk just read (and the one in the stream's hands) may still be referenced; earlier ones not.
    expect(mostAlive).toBeLessThanOrEqual(2);
  });
});
