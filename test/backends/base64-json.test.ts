import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeBase64Image, parseJsonBody, RawJsonString } from '../../src/backends/base64-json.js';

/** The parsed value with every RawJsonString turned back into the string it stands for. */
function plain(value: unknown): unknown {
  if (value instanceof RawJsonString) return value.toString();
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  return value;
}

describe('parseJsonBody', () => {
  it('keeps long strings as byte slices and parses the rest', () => {
    const b64 = Buffer.alloc(100_000, 'QUJD').toString('latin1');
    const body = Buffer.from(JSON.stringify({ created: 1, data: [{ b64_json: b64, revised_prompt: 'a “quoted” fox' }, { b64_json: 'short' }] }));
    const parsed = parseJsonBody(body) as { data: Array<{ b64_json: unknown; revised_prompt?: string }> };
    expect(parsed.data[0]!.b64_json).toBeInstanceOf(RawJsonString);
    expect((parsed.data[0]!.b64_json as RawJsonString).bytes.toString('latin1')).toBe(b64);
    // A slice of the body, not a copy.
    expect((parsed.data[0]!.b64_json as RawJsonString).bytes.buffer).toBe(body.buffer);
    expect(parsed.data[0]!.revised_prompt).toBe('a “quoted” fox');
    expect(parsed.data[1]!.b64_json).toBe('short');
  });

  it('parses a long string with escapes as a plain string', () => {
    const text = `${'x'.repeat(70_000)}\\/\n"end"`;
    expect(parseJsonBody(Buffer.from(JSON.stringify({ a: text })))).toEqual({ a: text });
  });

  it('gives what JSON.parse gives, for any JSON (property, with a tiny threshold so raw strings are common)', () => {
    fc.assert(
      fc.property(fc.jsonValue({ stringUnit: 'binary' }), fc.integer({ min: 0, max: 12 }), (value, threshold) => {
        const text = JSON.stringify(value);
        expect(plain(parseJsonBody(Buffer.from(text), threshold))).toEqual(JSON.parse(text));
      }),
      { numRuns: 500 },
    );
  });

  it('throws SyntaxError for what is not JSON, with or without long strings', () => {
    const long = 'A'.repeat(70_000);
    for (const text of ['', '{', 'not json', `{"a":"${long}"`, `{"a":"${long}",}`, `["${long}" "x"]`, `{"a":"${long}"}}`]) {
      expect(() => parseJsonBody(Buffer.from(text)), text.slice(0, 20)).toThrow(SyntaxError);
    }
  });

  it('a string that looks like its own marker stays a string', () => {
    const body = Buffer.from(JSON.stringify({ a: '\u0000pixeld-raw-0', b: 'B'.repeat(70_000) }));
    const parsed = parseJsonBody(body) as { a: unknown; b: unknown };
    expect(parsed.a).toBe('\u0000pixeld-raw-0');
    expect(parsed.b).toBeInstanceOf(RawJsonString);
  });
});

describe('decodeBase64Image', () => {
  const bytes = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0xfb, 0xff, 0xfe, 0x00, 0x3e]);
  const b64 = bytes.toString('base64');

  it('decodes bare base64, data URLs, line breaks, the URL-safe alphabet and missing padding', () => {
    const forms = [
      b64,
      `data:image/png;base64,${b64}`,
      `DATA:image/png;BASE64,${b64}`,
      `${b64.slice(0, 4)}\n${b64.slice(4)}`,
      bytes.toString('base64url'),
      b64.replace(/=+$/, ''),
      new RawJsonString(Buffer.from(b64)),
    ];
    for (const form of forms) expect(decodeBase64Image(form), String(form)).toEqual(bytes);
  });

  it('gives undefined when nothing decodes', () => {
    expect(decodeBase64Image('')).toBeUndefined();
    expect(decodeBase64Image('data:image/png;base64,')).toBeUndefined();
    expect(decodeBase64Image('!!!')).toBeUndefined();
  });
});
