import { readdir } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { recordFigures } from './harness/figures.js';
import {
  imageFixtures,
  jpegClaiming,
  judge,
  multipartBody,
  pngClaiming,
  rawPost,
  webpClaiming,
  type ImageFixtures,
  type RawAnswer,
  type RawPart,
} from './harness/hostile.js';
import { MODE, SEED, SIZES, sleep } from './harness/mode.js';

/**
 * Hostile input, by property-based fuzzing (fast-check) against a real daemon: JSON bodies and multipart
 * bodies with odd field names, nested brackets, duplicate fields, huge fields, invalid UTF-8, truncation
 * and broken boundaries; images with corrupt headers, lying dimensions, animation, CMYK, 16 bits, masks of
 * the wrong size; and `image_url`s aimed at loopback, link-local, private ranges or `file:`. Every input
 * is either a valid request (2xx) or answered 4xx in the OpenAI error shape with a documented code; none
 * is answered 5xx, none leaves a temp file, none makes the daemon fetch anything, and nothing reaches
 * Object.prototype. (validation.test.ts pins each rule once; this throws everything at all of them.)
 */

const KiB = 1024;
const MAX_BODY_BYTES = 256 * KiB;

let t: TestDaemon;
let fx: ImageFixtures;
let canary: Server;
let canaryUrl: string;
const canaryHits: string[] = [];
const tally = { inputs: 0, jsonBodies: 0, multipartBodies: 0, images: 0, imageUrls: 0, accepted: 0, answered4xx: 0, answered5xx: 0, tempFilesLeft: 0 };
const problems: string[] = [];
const prototypeBefore = Object.getOwnPropertyNames(Object.prototype).sort().join();

beforeAll(async () => {
  t = await startTestDaemon({
    config: {
      server: { maxBodyBytes: MAX_BODY_BYTES },
      limits: { maxInputImageBytes: 128 * KiB, maxInputPixels: 4_000_000, maxPromptChars: 2_000 },
      rateLimits: { requestsPerMinute: 1_000_000, imagesPerMinute: 1_000_000 },
      backends: [{ id: 'reference', type: 'reference', concurrency: 2, latencyMsPerImage: 0, maxQueuedJobs: 100_000 }],
      models: [{ id: 'pix', backend: 'reference', capabilities: ['generation', 'edit'], sizes: ['64x64'], maxN: 2, maxInFlight: 100_000 }],
    },
  });
  fx = await imageFixtures(64);
  canary = createServer((req, res) => {
    canaryHits.push(`${req.method} ${req.url}`);
    res.writeHead(200, { 'content-type': 'image/png' }).end(fx.png);
  });
  await new Promise<void>((resolve) => canary.listen(0, '127.0.0.1', resolve));
  canaryUrl = `127.0.0.1:${(canary.address() as AddressInfo).port}`;
}, 60_000);

afterAll(async () => {
  await t?.close();
  await new Promise((resolve) => canary?.close(resolve));
});

afterEach(() => {
  expect(Object.getOwnPropertyNames(Object.prototype).sort().join(), 'Object.prototype was polluted').toBe(prototypeBefore);
  expect(({} as Record<string, unknown>).polluted).toBeUndefined();
});

/** The temp dir empties right after the answer (cleanup may trail it by a moment). */
async function tempFilesLeft(): Promise<number> {
  const deadline = Date.now() + 3_000;
  for (;;) {
    const left = (await readdir(t.daemon.blobs.tmpDir)).length;
    if (left === 0 || Date.now() > deadline) return left;
    await sleep(20);
  }
}

/** Sends one hostile input and checks the rule; returns the answer for case-specific checks. */
async function send(kind: keyof typeof tally, path: string, contentType: string | undefined, body: Buffer): Promise<RawAnswer & { code?: string }> {
  tally.inputs += 1;
  tally[kind] += 1;
  let answer: RawAnswer;
  try {
    answer = await rawPost(t.url, path, contentType, body);
  } catch (err) {
    problems.push(`${path}: no answer (${String(err)})`);
    throw new Error(`${path}: the daemon did not answer: ${String(err)}`);
  }
  const j = judge(answer);
  if (j.verdict === 'accepted') tally.accepted += 1;
  else if (answer.status >= 500) tally.answered5xx += 1;
  else tally.answered4xx += 1;
  const left = await tempFilesLeft();
  tally.tempFilesLeft += left;
  if (j.problem) problems.push(`${path}: ${j.problem}`);
  expect(j.problem, `${path} ${contentType}`).toBeUndefined();
  expect(left, 'temp files left behind').toBe(0);
  return { ...answer, code: j.code };
}

const ENDPOINTS = ['/v1/async/images/generations', '/v1/async/images/edits', '/v1/images/generations', '/v1/images/edits', '/v1/proxy/images/edits'];
const ODD_NAMES = [
  '__proto__',
  'constructor',
  'prototype',
  'toString',
  'valueOf',
  'hasOwnProperty',
  'prompt[]',
  'prompt[0]',
  'a[b][c]',
  '[[[',
  ']]]',
  '',
  'images[]',
  'mask[x]',
  'image[0]',
  '__proto__[polluted]',
  'constructor[prototype][polluted]',
  'a'.repeat(5_000),
  `x${'[y]'.repeat(300)}`,
];
const FIELD_NAMES = ['prompt', 'model', 'n', 'size', 'quality', 'response_format', 'output_format', 'background', 'stream', 'images', 'image', 'mask', 'seed', 'user'];
const name = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...ODD_NAMES) },
  { weight: 1, arbitrary: fc.constantFrom(...FIELD_NAMES) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 24 }) },
);

/** JSON text of a value: ordinary JSON, deep brackets, objects that break String(), huge strings. */
const jsonValueText = fc.oneof(
  { weight: 4, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v) ?? 'null') },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 200_000 }).map((d) => `${'['.repeat(d)}${']'.repeat(d)}`) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 20_000 }).map((d) => `${'{"a":'.repeat(d)}1${'}'.repeat(d)}`) },
  { weight: 2, arbitrary: fc.constantFrom('{"toString":1}', '{"toString":1,"valueOf":2}', '{"__proto__":{"polluted":1}}', '[{"toString":null}]') },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 2 * MAX_BODY_BYTES }).map((n) => JSON.stringify('x'.repeat(n))) },
);

const INVALID_UTF8 = [[0xc3], [0xff], [0xfe, 0xff], [0xed, 0xa0, 0x80], [0xc0, 0xaf], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82]];

/** Breaks a body the ways a network or a broken client does. */
const mutation = fc.oneof(
  { weight: 3, arbitrary: fc.constant((b: Buffer) => b) },
  { weight: 1, arbitrary: fc.double({ min: 0, max: 1, noNaN: true }).map((f) => (b: Buffer) => b.subarray(0, Math.floor(b.length * f))) },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.constantFrom(...INVALID_UTF8)).map(
      ([f, bytes]) =>
        (b: Buffer) =>
          Buffer.concat([b.subarray(0, Math.floor(b.length * f)), Buffer.from(bytes), b.subarray(Math.floor(b.length * f))]),
    ),
  },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }).map((junk) => (b: Buffer) => Buffer.concat([b, Buffer.from(junk)])) },
);

const runs = { numRuns: SIZES.fuzzRuns, seed: SEED, endOnFailure: true };

describe(`hostile input (${MODE}, ${SIZES.fuzzRuns} runs per property)`, () => {
  it('JSON bodies: odd names, nested brackets, duplicate fields, huge fields, invalid UTF-8, truncation', async () => {
    const body = fc.record({
      // Mostly a valid prompt beside the odd fields, so the fuzz gets past the first check.
      withPrompt: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
      entries: fc.array(fc.tuple(name, jsonValueText), { maxLength: 6 }),
      topLevel: fc.option(fc.jsonValue({ maxDepth: 2 }), { freq: 6 }),
      mutate: mutation,
      endpoint: fc.oneof({ weight: 3, arbitrary: fc.constant(ENDPOINTS[0]!) }, { weight: 2, arbitrary: fc.constantFrom(...ENDPOINTS) }),
      contentType: fc.constantFrom('application/json', 'APPLICATION/JSON; charset=utf-8', 'application/json; charset=utf-16', 'text/plain', undefined),
    });
    await fc.assert(
      fc.asyncProperty(body, async (b) => {
        const fields = [...(b.withPrompt ? [['prompt', JSON.stringify('a lighthouse')] as const] : []), ...b.entries.map(([k, v]) => [JSON.stringify(k), v] as const)];
        const text =
          b.topLevel !== null
            ? JSON.stringify(b.topLevel) ?? 'null'
            : `{${fields.map(([k, v], i) => `${i === 0 && b.withPrompt ? '"prompt"' : k}:${v}`).join(',')}}`;
        await send('jsonBodies', b.endpoint, b.contentType, b.mutate(Buffer.from(text, 'utf8')));
      }),
      runs,
    );
  }, 300_000);

  it('multipart bodies: odd and bracketed names, duplicates, huge fields, invalid UTF-8, truncated and malformed boundaries', async () => {
    const partArb = fc.record({
      name,
      form: fc.oneof({ weight: 3, arbitrary: fc.constant('text') }, { weight: 1, arbitrary: fc.constantFrom('file', 'no-name', 'no-disposition', 'unquoted') }),
      filename: fc.oneof(fc.constant('a.png'), fc.constant('../../etc/passwd'), fc.string({ unit: 'binary', maxLength: 16 }), fc.constant('a"b.png')),
      value: fc.oneof(
        { weight: 3, arbitrary: fc.string({ unit: 'binary', maxLength: 64 }).map((s) => Buffer.from(s)) },
        { weight: 1, arbitrary: fc.uint8Array({ maxLength: 256 }).map((u) => Buffer.from(u)) },
        { weight: 1, arbitrary: fc.constant(null).map(() => fx.png) },
        { weight: 1, arbitrary: fc.integer({ min: 1, max: 2 * MAX_BODY_BYTES }).map((n) => Buffer.alloc(n, 0x61)) },
        { weight: 1, arbitrary: fc.constantFrom(...INVALID_UTF8).map((bytes) => Buffer.from([0x61, ...bytes, 0x62])) },
      ),
    });
    const body = fc.record({
      boundary: fc.oneof(
        { weight: 3, arbitrary: fc.constant('----pixeldFuzzBoundary') },
        { weight: 1, arbitrary: fc.stringMatching(/^[A-Za-z0-9'()+_,-./:=?]{1,70}$/) },
        { weight: 1, arbitrary: fc.constantFrom('x'.repeat(200), '') },
      ),
      // Mostly well-formed framing, so the odd parts reach the field handling behind the parser.
      headerBoundary: fc.oneof({ weight: 4, arbitrary: fc.constant('same') }, { weight: 1, arbitrary: fc.constantFrom('quoted', 'other', 'missing', 'empty') }),
      promptFirst: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
      parts: fc.array(partArb, { maxLength: 8 }),
      closing: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
      mutate: mutation,
      endpoint: fc.oneof({ weight: 3, arbitrary: fc.constant(ENDPOINTS[0]!) }, { weight: 2, arbitrary: fc.constantFrom(...ENDPOINTS) }),
    });
    await fc.assert(
      fc.asyncProperty(body, async (b) => {
        const parts: RawPart[] = [];
        if (b.promptFirst) parts.push({ disposition: 'form-data; name="prompt"', value: Buffer.from('a fox') });
        for (const p of b.parts) {
          const quotedName = `"${p.name.replaceAll('"', '%22')}"`;
          const disposition =
            p.form === 'no-disposition'
              ? undefined
              : p.form === 'no-name'
                ? 'form-data'
                : p.form === 'unquoted'
                  ? `form-data; name=${p.name}`
                  : p.form === 'file'
                    ? `form-data; name=${quotedName}; filename="${p.filename}"`
                    : `form-data; name=${quotedName}`;
          parts.push({ disposition, contentType: p.form === 'file' ? 'image/png' : undefined, value: p.value });
        }
        const raw = multipartBody(b.boundary, parts, b.closing);
        const header =
          b.headerBoundary === 'same'
            ? `multipart/form-data; boundary=${b.boundary}`
            : b.headerBoundary === 'quoted'
              ? `multipart/form-data; boundary="${b.boundary}"`
              : b.headerBoundary === 'other'
                ? 'multipart/form-data; boundary=not-the-one-used'
                : b.headerBoundary === 'empty'
                  ? 'multipart/form-data; boundary='
                  : 'multipart/form-data';
        await send('multipartBodies', b.endpoint, header, b.mutate(raw));
      }),
      runs,
    );
  }, 300_000);

  it('images: corrupt PNG/JPEG/WebP headers, truncations, masks of any size — as files and as data URLs', async () => {
    const image = fc.record({
      source: fc.constantFrom<keyof ImageFixtures>('png', 'jpeg', 'webp', 'webpAlpha', 'cmykJpeg', 'png16', 'animatedWebp'),
      flips: fc.array(fc.tuple(fc.nat({ max: 120 }), fc.nat({ max: 255 })), { maxLength: 4 }),
      cut: fc.option(fc.double({ min: 0, max: 1, noNaN: true }), { freq: 3 }),
      mask: fc.option(fc.tuple(fc.constantFrom(32, 63, 64, 65), fc.constantFrom(32, 64, 100)), { freq: 2 }),
      asJson: fc.boolean(),
    });
    await fc.assert(
      fc.asyncProperty(image, async (c) => {
        const bytes = Buffer.from(fx[c.source]);
        for (const [offset, value] of c.flips) if (offset < bytes.length) bytes[offset] = value;
        const img = c.cut === null ? bytes : bytes.subarray(0, Math.floor(bytes.length * c.cut));
        const mask = c.mask
          ? await sharp({ create: { width: c.mask[0], height: c.mask[1], channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } }).png().toBuffer()
          : undefined;
        let a: RawAnswer & { code?: string };
        if (c.asJson) {
          const body = { prompt: 'fix it', images: [{ image_url: `data:image/png;base64,${img.toString('base64')}` }], ...(mask ? { mask: { image_url: `data:image/png;base64,${mask.toString('base64')}` } } : {}) };
          a = await send('images', '/v1/async/images/edits', 'application/json', Buffer.from(JSON.stringify(body)));
        } else {
          const parts: RawPart[] = [
            { disposition: 'form-data; name="prompt"', value: Buffer.from('fix it') },
            { disposition: 'form-data; name="image"; filename="i.png"', contentType: 'image/png', value: img },
          ];
          if (mask) parts.push({ disposition: 'form-data; name="mask"; filename="m.png"', contentType: 'image/png', value: mask });
          a = await send('images', '/v1/async/images/edits', 'multipart/form-data; boundary=b0undary', multipartBody('b0undary', parts));
        }
        // An intact image with a mask of another size is always refused for it.
        if (c.flips.length === 0 && c.cut === null && c.source !== 'animatedWebp' && mask && (c.mask![0] !== 64 || c.mask![1] !== 64)) {
          expect(a.code).toBe('mask_size_mismatch');
        }
        if (c.source === 'animatedWebp' && c.flips.length === 0 && a.status !== 400) expect.fail(`an animated WebP was answered ${a.status}`);
      }),
      runs,
    );
  }, 300_000);

  it('regression: an ignored field holding an object without a usable toString, deep brackets or a bracketed multipart name was a 500', async () => {
    // fingerprintOf() called String() on every field: {"toString":1}, null-prototype objects (multer's
    // `a[b]` fields) threw, and 100,000 nested arrays overflowed the stack.
    const json = async (text: string) => send('jsonBodies', '/v1/async/images/generations', 'application/json', Buffer.from(text));
    expect((await json('{"prompt":"p","x":{"toString":1}}')).status).toBe(202);
    expect((await json('{"prompt":"p","x":{"toString":1,"valueOf":2}}')).status).toBe(202);
    const deep = await json(`{"prompt":"p","x":${'['.repeat(100_000)}${']'.repeat(100_000)}}`);
    expect([202, 400]).toContain(deep.status);
    const form = multipartBody('fb', [
      { disposition: 'form-data; name="prompt"', value: Buffer.from('p') },
      { disposition: 'form-data; name="extra[a][b]"', value: Buffer.from('v') },
    ]);
    expect((await send('multipartBodies', '/v1/async/images/generations', 'multipart/form-data; boundary=fb', form)).status).toBe(202);
  });

  it('images that lie about their size, animated WebP, mask size mismatch: 4xx without decoding', async () => {
    const edit = async (img: Buffer, mask?: Buffer) => {
      const parts: RawPart[] = [
        { disposition: 'form-data; name="prompt"', value: Buffer.from('p') },
        { disposition: 'form-data; name="image"; filename="i"', contentType: 'image/png', value: img },
      ];
      if (mask) parts.push({ disposition: 'form-data; name="mask"; filename="m.png"', contentType: 'image/png', value: mask });
      return send('images', '/v1/async/images/edits', 'multipart/form-data; boundary=zz', multipartBody('zz', parts));
    };
    const started = Date.now();
    const png = await edit(pngClaiming(fx.png, 100_000, 100_000));
    expect({ status: png.status, code: png.code }).toEqual({ status: 400, code: 'image_too_large' });
    expect(JSON.parse(png.text).error.message).toContain('100000x100000');
    // libjpeg's own ceiling is 65,500 a side: beyond it the header is refused as unreadable, below it as too large.
    const jpeg = await edit(jpegClaiming(fx.jpeg, 60_000, 60_000));
    expect({ status: jpeg.status, code: jpeg.code }).toEqual({ status: 400, code: 'image_too_large' });
    const jpegMax = await edit(jpegClaiming(fx.jpeg, 65_535, 65_535));
    expect({ status: jpegMax.status, code: jpegMax.code }).toEqual({ status: 400, code: 'invalid_image' });
    const webp = await edit(webpClaiming(fx.webpAlpha, 100_000, 100_000));
    expect(webp.status).toBe(400);
    expect(['image_too_large', 'invalid_image']).toContain(webp.code);
    // Refused from the headers: no 10-gigapixel decode happened.
    expect(Date.now() - started).toBeLessThan(5_000);
    const animated = await edit(fx.animatedWebp);
    expect({ status: animated.status, code: animated.code }).toEqual({ status: 400, code: 'invalid_image' });
    expect(JSON.parse(animated.text).error.message).toMatch(/animated/);
    const small = await sharp({ create: { width: 48, height: 64, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } }).png().toBuffer();
    expect((await edit(fx.png, small)).code).toBe('mask_size_mismatch');
    expect((await edit(fx.png, fx.cmykJpeg)).code).toBe('invalid_mask');
  });

  it('CMYK JPEG and 16-bit PNG (image and mask) are valid images: accepted, edited, delivered at the right size', async () => {
    for (const [img, mask] of [
      [fx.cmykJpeg, undefined],
      [fx.png16, fx.mask16],
      [fx.cmykJpeg, fx.mask16],
    ] as const) {
      const parts: RawPart[] = [
        { disposition: 'form-data; name="prompt"', value: Buffer.from('paint') },
        { disposition: 'form-data; name="image"; filename="i"', contentType: 'image/jpeg', value: img },
      ];
      if (mask) parts.push({ disposition: 'form-data; name="mask"; filename="m.png"', contentType: 'image/png', value: mask });
      const a = await send('images', '/v1/images/edits', 'multipart/form-data; boundary=cm', multipartBody('cm', parts));
      expect(a.status, a.text.slice(0, 300)).toBe(200);
      const out = Buffer.from((JSON.parse(a.text) as { data: Array<{ b64_json: string }> }).data[0]!.b64_json, 'base64');
      const meta = await sharp(out).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual(['png', 64, 64]);
      expect((await sharp(out).stats()).channels.length).toBeGreaterThanOrEqual(3);
    }
  });

  it('image_url aimed at loopback, link-local, private ranges, file: or any remote URL: refused, nothing fetched', async () => {
    const port = canaryUrl.split(':')[1]!;
    const hosts = [
      canaryUrl,
      `localhost:${port}`,
      `[::1]:${port}`,
      `0.0.0.0:${port}`,
      `2130706433:${port}`,
      `0x7f000001:${port}`,
      `0177.0.0.1:${port}`,
      `127.1:${port}`,
      `[::ffff:127.0.0.1]:${port}`,
      `example.com@${canaryUrl}`,
      '169.254.169.254',
      '[fd00:ec2::254]',
      '10.0.0.1',
      '172.16.0.1',
      '192.168.1.1',
      '100.64.0.1',
      'metadata.google.internal',
      'example.com',
    ];
    const target = fc.oneof(
      fc.tuple(fc.constantFrom('http', 'https', 'HTTP', 'ftp', 'gopher', 'ws'), fc.constantFrom(...hosts), fc.constantFrom('/x.png', '/latest/meta-data/', '/computeMetadata/v1/', '')).map(
        ([scheme, host, path]) => `${scheme}://${host}${path}`,
      ),
      fc.constantFrom('file:///etc/passwd', 'file://localhost/etc/passwd', 'FILE:///proc/self/environ', 'file:/etc/hostname', '/etc/passwd', '//127.0.0.1/x.png', `  http://${canaryUrl}/`, `\thttp://${canaryUrl}/`, 'data:image/png,notbase64', 'data:text/html;base64,PGgxPg==', 'javascript:alert(1)', `blob:http://${canaryUrl}/x`),
    );
    const placement = fc.constantFrom('images-object', 'images-string', 'image-field', 'mask');
    await fc.assert(
      fc.asyncProperty(target, placement, async (url, where) => {
        const png = `data:image/png;base64,${fx.png.toString('base64')}`;
        const body =
          where === 'images-object'
            ? { prompt: 'p', images: [{ image_url: url }] }
            : where === 'images-string'
              ? { prompt: 'p', images: [url] }
              : where === 'image-field'
                ? { prompt: 'p', image: { image_url: url } }
                : { prompt: 'p', images: [{ image_url: png }], mask: { image_url: url } };
        const a = await send('imageUrls', '/v1/async/images/edits', 'application/json', Buffer.from(JSON.stringify(body)));
        expect(a.status, `${url} in ${where}`).toBe(400);
        expect(['invalid_image', 'invalid_request', 'invalid_mask']).toContain(a.code);
      }),
      runs,
    );
    await sleep(200);
    expect(canaryHits).toEqual([]);
  }, 300_000);

  it('the daemon is up and logged no unhandled error after all of it', async () => {
    expect((await fetch(`${t.url}/healthz`)).status).toBe(200);
    const unhandled = t.logs.filter((l) => l.level === 'error').map((l) => String(l.error ?? l.message).slice(0, 300));
    recordFigures({
      scenario: 'hostile-input',
      mode: MODE,
      seed: SEED,
      values: {
        ...tally,
        runsPerProperty: SIZES.fuzzRuns,
        problems: problems.length,
        urlFetches: canaryHits.length,
        unhandledErrors: unhandled.length,
        prototypePolluted: Object.getOwnPropertyNames(Object.prototype).sort().join() !== prototypeBefore,
        daemonDown: 0,
      },
    });
    expect(unhandled).toEqual([]);
    expect(problems).toEqual([]);
    expect(tally.answered5xx).toBe(0);
    expect(tally.inputs).toBeGreaterThan(4 * SIZES.fuzzRuns);
    // The fuzz reached both sides of the rule.
    expect(tally.accepted).toBeGreaterThan(0);
    expect(tally.answered4xx).toBeGreaterThan(0);
  });
});
