import { randomBytes } from 'node:crypto';
import { decodeBase64 } from '../images/base64.js';

/**
 * Backend answers that carry images as base64 inside JSON (OpenAI-compatible servers, AUTOMATIC1111):
 * parsing them without turning megabytes into strings three times, and decoding the images the same
 * lenient way for every backend.
 */

/**
 * A long JSON string value (never a key) kept as its bytes: base64 images, megabytes each. Such a value
 * has no escape in it, so its bytes are exactly its text.
 */
export class RawJsonString {
  constructor(readonly bytes: Buffer) {}

  toString(): string {
    return this.bytes.toString('utf8');
  }
}

/** Strings this long or longer, without escapes, come back as RawJsonString. @default 64 KiB */
export const RAW_STRING_MIN_BYTES = 64 * 1024;

/** Where a data URL's comma must be: `data:` + a media type and its parameters + `;base64`. */
const DATA_URL_HEAD_CHARS = 256;
/** Random per process: no string a backend sends can pass for one. */
const MARKER = `\u0000pixeld-raw-${randomBytes(12).toString('hex')}-`;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
/** Space, tab, line feed and carriage return: the only whitespace JSON allows between tokens. */
const JSON_BLANKS = new Set([0x20, 0x09, 0x0a, 0x0d]);

/**
 * JSON.parse for backend answers that carry images as base64: every string value of at least `minRawBytes`
 * without escapes is returned as a RawJsonString holding a slice of `bytes`, and only the rest of the
 * document — a few hundred bytes — is decoded and parsed. Decoding a 3.5 MB answer to a UTF-8 string,
 * parsing it and copying the image text out again cost ~11 ms and three short-lived 3.5 MB strings per
 * image (issue #7's sync path); slicing costs nothing.
 *
 * String boundaries are found by jumping from quote to quote: outside strings JSON has no quotes, inside
 * them a quote is a boundary unless an odd number of backslashes precedes it. Input that is not JSON
 * still fails in JSON.parse; only the inside of a raw string goes unchecked (for control characters),
 * which whoever decodes it does anyway.
 *
 * @throws SyntaxError when `bytes` is not JSON.
 */
export function parseJsonBody(bytes: Buffer, minRawBytes: number = RAW_STRING_MIN_BYTES): unknown {
  const raws: Buffer[] = [];
  const skeleton: Buffer[] = [];
  let copiedTo = 0;
  let pos = 0;
  for (;;) {
    const open = bytes.indexOf(QUOTE, pos);
    if (open === -1) break;
    const close = closingQuote(bytes, open);
    if (close === -1) break;
    if (close - open - 1 >= minRawBytes && !isKey(bytes, close)) {
      const escape = bytes.indexOf(BACKSLASH, open + 1);
      if (escape === -1 || escape > close) {
        skeleton.push(bytes.subarray(copiedTo, open), Buffer.from(JSON.stringify(`${MARKER}${raws.length}`)));
        raws.push(bytes.subarray(open + 1, close));
        copiedTo = close + 1;
      }
    }
    pos = close + 1;
  }
  if (raws.length === 0) return JSON.parse(bytes.toString('utf8'));
  skeleton.push(bytes.subarray(copiedTo));
  return JSON.parse(Buffer.concat(skeleton).toString('utf8'), (_key, value: unknown) => {
    if (typeof value !== 'string' || !value.startsWith(MARKER)) return value;
    const raw = raws[Number(value.slice(MARKER.length))];
    return raw === undefined ? value : new RawJsonString(raw);
  });
}

/** The quote that ends the string opened at `open`, or -1 when the string never ends. */
function closingQuote(bytes: Buffer, open: number): number {
  let at = open;
  for (;;) {
    at = bytes.indexOf(QUOTE, at + 1);
    if (at === -1) return -1;
    let backslashes = 0;
    while (bytes[at - 1 - backslashes] === BACKSLASH) backslashes += 1;
    if (backslashes % 2 === 0) return at;
  }
}

/** Whether the string ending at `close` is an object key: the next byte that is not blank is a colon. */
function isKey(bytes: Buffer, close: number): boolean {
  let at = close + 1;
  while (at < bytes.length && JSON_BLANKS.has(bytes[at] as number)) at += 1;
  return bytes[at] === COLON;
}

/**
 * The bytes of a base64 image as servers send it: bare or as a data URL, with or without line breaks,
 * padding or the URL-safe alphabet. Text that is not base64 at all decodes to bytes that are no image,
 * which the runner's output check refuses; undefined when nothing decodes.
 */
export function decodeBase64Image(value: string | RawJsonString): Buffer | undefined {
  let text = typeof value === 'string' ? Buffer.from(value, 'latin1') : value.bytes;
  const head = text.toString('latin1', 0, Math.min(text.length, DATA_URL_HEAD_CHARS));
  const comma = head.slice(0, 5).toLowerCase() === 'data:' ? head.indexOf(',') : -1;
  if (comma !== -1 && head.slice(0, comma).toLowerCase().endsWith(';base64')) text = text.subarray(comma + 1);
  const bytes = decodeBase64(text);
  return bytes.length === 0 ? undefined : bytes;
}
