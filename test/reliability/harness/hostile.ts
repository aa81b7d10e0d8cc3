import http from 'node:http';
import sharp from 'sharp';
import { ERROR_CODES, type ErrorCode } from '../../../src/errors.js';

/**
 * Raw requests and crafted images for the hostile-input properties: bytes go out exactly as built (no
 * client-side encoding fixes them up), and answers are judged by one rule — 2xx for a valid request,
 * otherwise 4xx in the OpenAI error shape with a documented code; never 5xx, never a dropped connection.
 */

export interface RawAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

/** Sends `body` as is; an answer that arrives before the upload is finished counts (413 does that). */
export function rawPost(url: string, path: string, contentType: string | undefined, body: Buffer): Promise<RawAnswer> {
  return new Promise<RawAnswer>((resolve, reject) => {
    let answered = false;
    const headers: Record<string, string | number> = { 'content-length': body.length };
    if (contentType !== undefined) headers['content-type'] = contentType;
    const req = http.request(`${url}${path}`, { method: 'POST', headers, agent: false }, (res) => {
      answered = true;
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', (err) => {
      if (!answered) reject(err);
    });
    req.end(body);
  });
}

export type Verdict = 'accepted' | '4xx';

/** Why an answer breaks the rule, or undefined when it keeps it. */
export function judge(a: RawAnswer): { verdict: Verdict; problem?: string; code?: string } {
  if (a.status === 200 || a.status === 202) return { verdict: 'accepted' };
  if (a.status < 400 || a.status >= 500) return { verdict: '4xx', problem: `status ${a.status}: ${a.text.slice(0, 300)}` };
  let body: { error?: Record<string, unknown> };
  try {
    body = JSON.parse(a.text) as { error?: Record<string, unknown> };
  } catch {
    return { verdict: '4xx', problem: `status ${a.status} without a JSON body: ${a.text.slice(0, 200)}` };
  }
  const e = body.error;
  if (!e || Object.keys(body).length !== 1 || Object.keys(e).sort().join() !== 'code,message,param,type') {
    return { verdict: '4xx', problem: `status ${a.status} not in the error shape: ${a.text.slice(0, 200)}` };
  }
  const code = String(e.code);
  const info = ERROR_CODES[code as ErrorCode];
  if (!info) return { verdict: '4xx', problem: `undocumented code ${code}` };
  if (info.status !== a.status || info.type !== e.type) return { verdict: '4xx', problem: `${code} answered ${a.status}/${String(e.type)}` };
  if (typeof e.message !== 'string' || e.message === '') return { verdict: '4xx', problem: `${code} without a message` };
  if (typeof a.headers['x-request-id'] !== 'string') return { verdict: '4xx', problem: `${code} without x-request-id` };
  return { verdict: '4xx', code };
}

/** A multipart body assembled by hand, so it can be wrong in every way a real one can. */
export interface RawPart {
  /** The whole Content-Disposition value, or undefined to leave the header out. */
  disposition: string | undefined;
  contentType?: string;
  value: Buffer;
}

export function multipartBody(boundary: string, parts: RawPart[], closing = true): Buffer {
  const chunks: Buffer[] = [];
  for (const part of parts) {
    let head = `--${boundary}\r\n`;
    if (part.disposition !== undefined) head += `Content-Disposition: ${part.disposition}\r\n`;
    if (part.contentType !== undefined) head += `Content-Type: ${part.contentType}\r\n`;
    chunks.push(Buffer.from(`${head}\r\n`, 'latin1'), part.value, Buffer.from('\r\n'));
  }
  if (closing) chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(chunks);
}

// ---------------------------------------------------------------------------------------------- images

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Buffer): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A valid PNG whose IHDR claims width × height (CRC fixed up, so only the claim is a lie). */
export function pngClaiming(png: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(png);
  out.writeUInt32BE(width, 16);
  out.writeUInt32BE(height, 20);
  out.writeUInt32BE(crc32(out.subarray(12, 29)), 29);
  return out;
}

/** A valid baseline JPEG whose SOF0 claims width × height (at most 65535 each). */
export function jpegClaiming(jpeg: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(jpeg);
  for (let i = 2; i < out.length - 9; i += 1) {
    if (out[i] === 0xff && (out[i + 1] === 0xc0 || out[i + 1] === 0xc2)) {
      out.writeUInt16BE(height, i + 5);
      out.writeUInt16BE(width, i + 7);
      return out;
    }
  }
  throw new Error('no SOF marker');
}

/** A WebP with a VP8X header whose canvas claims width × height (24-bit fields, stored minus one). */
export function webpClaiming(webpWithAlpha: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(webpWithAlpha);
  if (out.toString('latin1', 12, 16) !== 'VP8X') throw new Error('not a VP8X WebP');
  out.writeUIntLE(width - 1, 24, 3);
  out.writeUIntLE(height - 1, 27, 3);
  return out;
}

export interface ImageFixtures {
  png: Buffer;
  jpeg: Buffer;
  webp: Buffer;
  webpAlpha: Buffer;
  mask: Buffer;
  animatedWebp: Buffer;
  cmykJpeg: Buffer;
  png16: Buffer;
  mask16: Buffer;
}

export async function imageFixtures(side = 64): Promise<ImageFixtures> {
  const base = () => sharp({ create: { width: side, height: side, channels: 3, background: { r: 30, g: 140, b: 200 } } });
  const alpha = () => sharp({ create: { width: side, height: side, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0.5 } } });
  const frame = (r: number) => sharp({ create: { width: side, height: side, channels: 3, background: { r, g: 10, b: 10 } } }).png().toBuffer();
  return {
    png: await base().png().toBuffer(),
    jpeg: await base().jpeg().toBuffer(),
    webp: await base().webp().toBuffer(),
    webpAlpha: await alpha().webp().toBuffer(),
    mask: await alpha().png().toBuffer(),
    animatedWebp: await sharp(await Promise.all([20, 120, 220].map(frame)), { join: { animated: true } }).webp({ loop: 0 }).toBuffer(),
    cmykJpeg: await base().toColourspace('cmyk').jpeg().toBuffer(),
    png16: await base().toColourspace('rgb16').png().toBuffer(),
    mask16: await alpha().toColourspace('rgb16').png().toBuffer(),
  };
}
