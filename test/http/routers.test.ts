import { Wallet } from 'ethers';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendError } from '../../src/backends/errors.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/**
 * What the routers in front of a provider read, as their own docs and published scripts read it (issue 13,
 * "Routers"): theRouter's job object, 0G's Retry-After on submit, theRouter's x-request-id, and what a
 * router needs from /v1/models to choose and price a provider.
 */

const MODEL = 'ctl-model';

let daemon: TestDaemon | undefined;
afterEach(async () => {
  await daemon?.close();
  daemon = undefined;
});

async function startControlled(extra: Partial<ConfigInput> = {}) {
  const backend = new ControlledBackend('ctl');
  daemon = await startTestDaemon({
    config: {
      backends: [{ id: 'ctl', type: 'reference', concurrency: 1 }],
      models: [{ id: MODEL, backend: 'ctl', capabilities: ['generation', 'edit'], sizes: ['64x64'], maxN: 4 }],
      ...extra,
    },
    backends: new Map([['ctl', backend]]),
  });
  return { backend, url: daemon.url };
}

async function postJson(url: string, body: Record<string, unknown>) {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { res, body: (await res.json()) as Record<string, any> };
}

describe("theRouter's job object", () => {
  it('a succeeded job lists unsigned_urls, links the daemon serves for each image, even when the job asked for b64_json', async () => {
    const { backend, url } = await startControlled();
    const submitted = await postJson(`${url}/v1/images/generations?async=true`, { model: MODEL, prompt: 'two foxes', size: '64x64', n: 2 });
    expect(submitted.res.status).toBe(202);
    expect(submitted.body).toMatchObject({
      id: expect.stringMatching(/^job_/),
      object: 'image_job',
      status: 'queued',
      model: MODEL,
      created_at: expect.any(Number),
      polling_url: `${url}/v1/jobs/${submitted.body.id}`,
    });
    expect(submitted.body.unsigned_urls).toBeUndefined();

    await (await backend.nextCall()).succeed();
    const done = (await (await fetch(`${submitted.body.polling_url}?wait=10`)).json()) as Record<string, any>;
    expect(done.status).toBe('succeeded');
    expect(done.expires_at).toBeGreaterThan(done.created_at);
    expect(done.unsigned_urls).toEqual([
      expect.stringMatching(new RegExp(`^${url}/v1/files/${done.id}/[0-9a-f]{32}/0\\.png$`)),
      expect.stringMatching(new RegExp(`^${url}/v1/files/${done.id}/[0-9a-f]{32}/1\\.png$`)),
    ]);
    // `result` stays, with the images as the job asked for them; each link serves the very same bytes.
    expect(done.result.data).toHaveLength(2);
    for (const [i, link] of (done.unsigned_urls as string[]).entries()) {
      const file = await fetch(link);
      expect(file.status).toBe(200);
      expect(file.headers.get('content-type')).toBe('image/png');
      const bytes = Buffer.from(await file.arrayBuffer());
      expect(bytes.equals(Buffer.from(done.result.data[i].b64_json, 'base64'))).toBe(true);
      expect((await sharp(bytes).metadata()).width).toBe(64);
    }
  });

  it('gives the same links as response_format "url", and none once the result has expired', async () => {
    const { backend, url } = await startControlled({ jobs: { resultTtlMs: 1000 } });
    const submitted = await postJson(`${url}/v1/images/generations?async=true`, {
      model: MODEL,
      prompt: 'a fox',
      size: '64x64',
      response_format: 'url',
    });
    await (await backend.nextCall()).succeed();
    const done = (await (await fetch(`${submitted.body.polling_url}?wait=10`)).json()) as Record<string, any>;
    expect(done.unsigned_urls).toEqual([done.result.data[0].url]);

    await new Promise((r) => setTimeout(r, 1100));
    const expired = (await (await fetch(submitted.body.polling_url)).json()) as Record<string, any>;
    expect(expired.status).toBe('expired');
    expect(expired.unsigned_urls).toBeUndefined();
  });

  it('a job submitted in 0G\'s shape reads the same at /v1/jobs/{id}; a failed one has an error and no links', async () => {
    const { backend, url } = await startControlled();
    const ok = await postJson(`${url}/v1/async/images/generations`, { model: MODEL, prompt: 'fine', size: '64x64' });
    await (await backend.nextCall()).succeed();
    const done = (await (await fetch(`${url}/v1/jobs/${ok.body.jobId}?wait=10`)).json()) as Record<string, any>;
    expect(done.unsigned_urls).toHaveLength(1);

    const bad = await postJson(`${url}/v1/async/images/generations`, { model: MODEL, prompt: 'refused', size: '64x64' });
    (await backend.nextCall()).fail(new BackendError('ctl', 'moderation', 'the prompt was refused'));
    const failed = (await (await fetch(`${url}/v1/jobs/${bad.body.jobId}?wait=10`)).json()) as Record<string, any>;
    expect(failed.status).toBe('failed');
    expect(failed.error).toEqual({ code: 'moderation_blocked', message: 'the prompt was refused' });
    expect(failed.unsigned_urls).toBeUndefined();
    expect(failed.expires_at).toBeGreaterThanOrEqual(failed.created_at);
  });
});

describe('Retry-After on submit', () => {
  it.each([
    ['0G shape, generation', '/v1/async/images/generations', 'json'],
    ['0G shape, edit', '/v1/async/images/edits', 'multipart'],
    ["theRouter's ?async=true, generation", '/v1/images/generations?async=true', 'json'],
    ["theRouter's ?async=true, edit on the /v1/proxy path", '/v1/proxy/images/edits?async=true', 'multipart'],
  ] as const)('%s: the 202 says when to come back, estimated as the poll estimates it', async (_name, path, encoding) => {
    const { backend, url } = await startControlled();
    // One job holds the backend's only slot, so the submitted one waits behind it.
    const running = await postJson(`${url}/v1/async/images/generations`, { model: MODEL, prompt: 'first', size: '64x64' });
    const call = await backend.nextCall();

    let res: Response;
    if (encoding === 'json') {
      res = await fetch(`${url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: MODEL, prompt: 'second', size: '64x64', n: 2 }),
      });
    } else {
      const form = new FormData();
      form.set('model', MODEL);
      form.set('prompt', 'second');
      form.set('size', '64x64');
      form.set('n', '2');
      const png = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#336699' } }).png().toBuffer();
      form.set('image', new Blob([png], { type: 'image/png' }), 'in.png');
      res = await fetch(`${url}${path}`, { method: 'POST', body: form });
    }
    expect(res.status).toBe(202);
    const body = (await res.json()) as Record<string, any>;
    const id = body.jobId ?? body.id;
    const seconds = Number(res.headers.get('retry-after'));
    const ms = Number(res.headers.get('retry-after-ms'));
    expect(seconds).toBeGreaterThanOrEqual(1);
    expect(ms).toBeGreaterThanOrEqual(100);
    expect(ms).toBeLessThanOrEqual(seconds * 1000);
    // Nothing moved since the submit (the backend is held): the poll's estimate is the very same.
    const poll = await fetch(`${url}/v1/async/jobs/${id}`);
    expect(poll.headers.get('retry-after')).toBe(res.headers.get('retry-after'));
    expect(poll.headers.get('retry-after-ms')).toBe(res.headers.get('retry-after-ms'));

    await call.succeed();
    await daemon!.daemon.service.waitForEnd(running.body.jobId, 5_000);
  });

  it('a replayed submit of a finished job (Idempotency-Key) has no Retry-After', async () => {
    const { backend, url } = await startControlled();
    const send = () =>
      fetch(`${url}/v1/async/images/generations`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': 'replay-1' },
        body: JSON.stringify({ model: MODEL, prompt: 'once', size: '64x64' }),
      });
    const first = await send();
    const { jobId } = (await first.json()) as { jobId: string };
    await (await backend.nextCall()).succeed();
    await daemon!.daemon.service.waitForEnd(jobId, 5_000);
    const replay = await send();
    expect(replay.status).toBe(200);
    expect(replay.headers.get('retry-after')).toBeNull();
    expect(replay.headers.get('retry-after-ms')).toBeNull();
  });
});

describe('x-request-id', () => {
  const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

  it("is a fresh UUIDv4 (theRouter's form) when the caller sent none, and the caller's own when it sent a sane one", async () => {
    const { url } = await startControlled();
    const first = await postJson(`${url}/v1/images/generations?async=true`, { model: MODEL, prompt: 'a fox', size: '64x64' });
    const refused = await postJson(`${url}/v1/images/generations`, { model: 'no-such-model', prompt: 'a fox' });
    const ids = [first.res.headers.get('x-request-id'), refused.res.headers.get('x-request-id')];
    for (const id of ids) expect(id).toMatch(UUID_V4);
    expect(ids[0]).not.toBe(ids[1]);
    expect(daemon!.logs.some((line) => line.message === 'request' && line.requestId === ids[1])).toBe(true);

    const own = await fetch(`${url}/v1/jobs/${first.body.id}`, { headers: { 'x-request-id': 'router-7f3a:1' } });
    expect(own.headers.get('x-request-id')).toBe('router-7f3a:1');
    // Not a sane id (spaces, or longer than 128 characters): replaced rather than written into our logs.
    for (const insane of ['two words', 'x'.repeat(129)]) {
      const replaced = await fetch(`${url}/healthz`, { headers: { 'x-request-id': insane } });
      expect(replaced.headers.get('x-request-id')).toMatch(UUID_V4);
    }
  });
});

describe('/v1/models, for a router choosing and pricing a provider', () => {
  it('lists per model its capabilities, sizes, largest n, price in wei and in 0G, rate limits, verifiability and signer', async () => {
    daemon = await startTestDaemon({
      config: {
        backends: [{ id: 'gpu', type: 'reference' }],
        models: [
          { id: 'acme/flux', backend: 'gpu', capabilities: ['generation'], sizes: ['512x512', '1024x1024'], maxN: 4, pricePerImageWei: '1500000000000000' },
          { id: 'acme/inpaint', backend: 'gpu', capabilities: ['edit'], sizes: ['512x512'], maxN: 2 },
        ],
        rateLimits: { requestsPerMinute: 30, imagesPerMinute: 3 },
      },
    });
    const res = await fetch(`${daemon.url}/v1/models`);
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, any>;
    expect(body.object).toBe('list');
    const signer = daemon.daemon.tee.address;
    expect(body.data[0]).toEqual({
      id: 'acme/flux',
      object: 'model',
      created: expect.any(Number),
      owned_by: 'pixeld',
      type: 'text-to-image',
      capabilities: { generation: true, edit: false },
      sizes: ['512x512', '1024x1024'],
      default_size: '512x512',
      // maxN is 4, but a caller gets only 3 images a minute: n = 4 could never succeed.
      max_n: 3,
      extensions: ['seed', 'negative_prompt'],
      pricing: { image: '1500000000000000', unit: 'wei', image_0g: '0.0015' },
      rate_limits: { requests_per_minute: 30, images_per_minute: 3 },
      verifiability: 'none',
      tee_attested: false,
      tee: 'none',
      signing_address: signer,
    });
    expect(body.data[1]).toMatchObject({
      id: 'acme/inpaint',
      type: 'image-editing',
      capabilities: { generation: false, edit: true },
      max_n: 2,
      pricing: { image: '0', unit: 'wei', image_0g: '0.0' },
    });
    // The signer is the address that signs receipts and that the attestation binds.
    const report = (await (await fetch(`${daemon.url}/v1/attestation/report`)).json()) as Record<string, any>;
    expect(report.signing_address).toBe(signer);
  });

  it('says the signatures are attested when a TEE holds the key', async () => {
    const key = Wallet.createRandom();
    daemon = await startTestDaemon({
      tee: {
        mode: 'dstack',
        teeLabel: 'dstack',
        insecure: false,
        keySource: 'test-fake',
        address: key.address,
        signer: key,
        journalDir: '/nonexistent',
        signatureChain: [],
        info: async () => undefined,
        quote: async () => undefined,
      },
    });
    const body = (await (await fetch(`${daemon.url}/v1/models`)).json()) as Record<string, any>;
    expect(body.data[0]).toMatchObject({ verifiability: 'TeeML', tee_attested: true, tee: 'dstack', signing_address: key.address });
    expect(body.data[0].billable_0g).toBeUndefined();
  });
});
