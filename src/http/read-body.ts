import { createHash } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import type { Request, Response } from 'express';
import multer from 'multer';
import { PixeldError } from '../errors.js';
import { removeQuietly, storageError } from '../images/blob-store.js';

/**
 * Reads an image request body exactly once, hashing the raw bytes as they arrive (the TEE signs the
 * request as received, never a re-serialisation). JSON bodies are held as text, up to the body limit;
 * multipart file parts stream straight to temp files and are never held whole in memory.
 */

export interface UploadedFile {
  field: string;
  path: string;
  size: number;
  originalName: string;
}

export type RequestBody =
  | { kind: 'json'; sha256: string; bytes: number; value: unknown }
  | { kind: 'multipart'; sha256: string; bytes: number; fields: Record<string, string | string[]>; files: UploadedFile[] };

export interface BodyLimits {
  maxBodyBytes: number;
  maxFileBytes: number;
  maxFiles: number;
  tmpDir: string;
}

/**
 * Throws a PixeldError for a body that is too large, malformed or cut off; never writes to `res` (multer's
 * middleware signature wants it), so a refusal is answered once, by sendError.
 */
export async function readImageRequestBody(req: Request, res: Response, limits: BodyLimits): Promise<RequestBody> {
  const type = (req.headers['content-type'] ?? '').toLowerCase();
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limits.maxBodyBytes) throw tooLarge(limits.maxBodyBytes);
  if (type.startsWith('application/json')) return readJson(req, limits);
  if (type.startsWith('multipart/form-data')) return readMultipart(req, res, limits);
  throw new PixeldError(
    'unsupported_media_type',
    `Content-Type must be application/json or multipart/form-data, not "${type || 'none'}"`,
  );
}

async function readJson(req: Request, limits: BodyLimits): Promise<RequestBody> {
  const hash = createHash('sha256');
  // Each chunk is decoded as it arrives and let go: the body is held once, as text, not also as the
  // chunks and their concatenation. The decoder carries a character split across two chunks.
  const decoder = new StringDecoder('utf8');
  let text = '';
  let bytes = 0;
  try {
    for await (const chunk of req) {
      const buf = chunk as Buffer;
      bytes += buf.length;
      if (bytes > limits.maxBodyBytes) throw tooLarge(limits.maxBodyBytes);
      hash.update(buf);
      text += decoder.write(buf);
    }
  } catch (err) {
    if (err instanceof PixeldError) throw err;
    throw new PixeldError('invalid_json', 'the request body ended before it was complete', { cause: err });
  }
  if (!req.complete) throw new PixeldError('invalid_json', 'the request body ended before it was complete');
  text += decoder.end();
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new PixeldError('invalid_json', `the body is not valid JSON: ${(err as Error).message}`);
  }
  return { kind: 'json', sha256: hash.digest('hex'), bytes, value };
}

async function readMultipart(req: Request, res: Response, limits: BodyLimits): Promise<RequestBody> {
  const hash = createHash('sha256');
  let bytes = 0;
  // multer reads from `tap`, a copy of the request stream that hashes and counts on the way through.
  const tap = new PassThrough();
  const proxy = Object.assign(tap, { headers: req.headers }) as unknown as Request;
  const upload = multer({
    storage: multer.diskStorage({ destination: limits.tmpDir }),
    limits: {
      fileSize: limits.maxFileBytes,
      files: limits.maxFiles,
      // Base64 text fields can be large; the body limit bounds them all together.
      fieldSize: limits.maxBodyBytes,
      fields: 200,
      parts: 400,
    },
  }).any();

  const uploaded: string[] = [];
  const result = new Promise<RequestBody>((resolve, reject) => {
    let settled = false;
    const settle = (err: unknown, value?: RequestBody) => {
      if (settled) return;
      settled = true;
      req.off('data', count);
      req.off('close', cutOff);
      req.unpipe(tap);
      if (err) {
        // Without this, multer waits forever for the rest of a cut-off upload, keeping the half-written
        // temp file and its descriptor; a destroyed stream makes it stop and delete what it wrote.
        tap.destroy();
        req.resume();
        reject(err);
      } else resolve(value!);
    };
    // Stream events: these run outside any promise, so they may not throw or touch the response. The
    // answer, and the close of a connection whose body is still arriving, are sendError's.
    const count = (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes > limits.maxBodyBytes) {
        settle(tooLarge(limits.maxBodyBytes));
        return;
      }
      hash.update(chunk);
    };
    const cutOff = () => {
      if (!req.complete) settle(new PixeldError('invalid_multipart', 'the request body ended before it was complete'));
    };
    req.on('data', count);
    req.on('close', cutOff);
    req.pipe(tap);
    upload(proxy, res, (err: unknown) => {
      const files = ((proxy as unknown as { files?: Express.Multer.File[] }).files ?? []) as Express.Multer.File[];
      for (const f of files) uploaded.push(f.path);
      if (err) {
        settle(multipartError(err, limits));
        return;
      }
      if (!req.complete) {
        settle(new PixeldError('invalid_multipart', 'the request body ended before it was complete'));
        return;
      }
      settle(null, {
        kind: 'multipart',
        sha256: hash.digest('hex'),
        bytes,
        fields: (proxy.body ?? {}) as Record<string, string | string[]>,
        files: files.map((f) => ({ field: f.fieldname, path: f.path, size: f.size, originalName: f.originalname })),
      });
    });
  });
  try {
    return await result;
  } catch (err) {
    await Promise.all(uploaded.map(removeQuietly));
    throw err;
  }
}

function multipartError(err: unknown, limits: BodyLimits): PixeldError {
  if (err instanceof PixeldError) return err;
  // The temp file of an upload could not be written: the disk is full, the body is not malformed.
  const storage = storageError(err);
  if (storage instanceof PixeldError) return storage;
  if (err instanceof multer.MulterError) {
    switch (err.code) {
      case 'LIMIT_FILE_SIZE':
        return new PixeldError('payload_too_large', `file "${err.field}" is larger than ${limits.maxFileBytes} bytes`, {
          param: err.field ?? null,
        });
      case 'LIMIT_FILE_COUNT':
        return new PixeldError('too_many_images', `at most ${limits.maxFiles} files may be sent (16 images and a mask)`);
      case 'LIMIT_FIELD_VALUE':
        return tooLarge(limits.maxBodyBytes);
      default:
        return new PixeldError('invalid_multipart', `malformed multipart body: ${err.message}`, { param: err.field ?? null });
    }
  }
  const message = err instanceof Error ? err.message : String(err);
  return new PixeldError('invalid_multipart', `malformed multipart body: ${message}`, { cause: err });
}

function tooLarge(limit: number): PixeldError {
  return new PixeldError('payload_too_large', `the request body is larger than the ${limit}-byte limit`);
}
