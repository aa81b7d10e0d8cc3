import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { base64Length, decodeBase64, encodeBase64 } from '../../src/images/base64.js';

describe('encodeBase64 / decodeBase64', () => {
  it('match Buffer’s own base64 for any bytes, across slice boundaries (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300_000 }), (bytes) => {
        const b64 = Buffer.from(bytes).toString('base64');
        expect(encodeBase64(bytes).toString('latin1')).toBe(b64);
        expect(decodeBase64(Buffer.from(b64))).toEqual(Buffer.from(bytes));
      }),
      { numRuns: 40 },
    );
  });

  it('decode what servers send: the URL-safe alphabet, no padding, wrapped lines', () => {
    const bytes = randomBytes(200_001);
    const b64 = bytes.toString('base64');
    expect(decodeBase64(Buffer.from(bytes.toString('base64url')))).toEqual(bytes);
    expect(decodeBase64(Buffer.from(b64.replace(/=+$/, '')))).toEqual(bytes);
    expect(decodeBase64(Buffer.from(b64.replace(/.{76}/g, '$&\r\n')))).toEqual(bytes);
  });

  it('encode a view into a larger buffer as its own bytes only', () => {
    const whole = randomBytes(100_000);
    const view = whole.subarray(10, 99_990);
    expect(encodeBase64(view).toString('latin1')).toBe(Buffer.from(view).toString('base64'));
  });

  it('encode into the start of a buffer given, as long as the text or longer, leaving the rest alone', () => {
    const bytes = randomBytes(100_001);
    const into = Buffer.alloc(base64Length(bytes.length) + 10, '#');
    const text = encodeBase64(bytes, into);
    expect(text.buffer).toBe(into.buffer);
    expect(text.toString('latin1')).toBe(bytes.toString('base64'));
    expect(into.subarray(text.length).toString('latin1')).toBe('#'.repeat(10));
  });
});
