import { createHash } from 'node:crypto';
import { rmSync } from 'node:fs';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendError } from '../../src/backends/errors.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import { startTestDaemon, tempDir, type TestDaemon } from '../helpers/daemon.js';
import { parseExposition, valueOf, type Exposition } from '../helpers/prometheus.js';
import { stubResolver, TEST_CA } from '../helpers/remote-image-host.js';
import { WebhookReceiver } from '../helpers/webhook-receiver.js';

/**
 * Issue 17's webhooks, end to end: a job's end POSTed to the submit's webhook_url with the finished poll's
 * body, signed per Standard Webhooks (checked by the standardwebhooks library in the receiver), retried with
 * the same webhook-id while the receiver is down, across a daemon restart too, and visible in the poll.
 * The receiver listens on loopback, which only webhooks.allowPrivate lets a delivery reach: the provider's
 * private-network case. Names resolve through a stub (hooks.example.test → 127.0.0.1) so TLS checks the
 * test certificate against a host name.
 */

const MODEL = 'ctl-model';
const RESOLVER = stubResolver({
  'hooks.example.test': ['127.0.0.1'],
  'other.example.test': ['127.0.0.1'],
  'inside.example.test': ['10.1.2.3'],
  'mixed.example.test': ['93.184.216.34', '192.168.1.10'],
  // Loopback when the submit checks it, a private address by the time of the delivery: a rebinding DNS server.
  'rebind.example.test': [['127.0.0.1'], ['10.1.2.3']],
  localhost: ['127.0.0.1'],
});
const FAST_RETRIES = { firstRetryDelayMs: 100, maxRetryDelayMs: 200, pollIntervalMs: 20, attemptTimeoutMs: 2_000 };
const API_KEYS = { alpha: 'sk-alpha-0123456789', beta: 'sk-beta-0123456789' };

let daemons: TestDaemon[] = [];
let receivers: WebhookReceiver[] = [];
afterEach(async () => {
  for (const d of daemons) await d.close();
  for (const r of receivers) await r.stop();
  daemons = [];
  receivers = [];
});

async function start(webhooks: Record<string, unknown> = { allowPrivate: ['127.0.0.1/32'], ...FAST_RETRIES }, dataDir?: string) {
  const backend = new ControlledBackend('ctl');
  const daemon = await startTestDaemon({
    config: {
      backends: [{ id: 'ctl', type: 'reference', concurrency: 1 } as ConfigInput['backends'][number]],
      models: [{ id: MODEL, backend: 'ctl', capabilities: ['generation', 'edit'], sizes: ['64x64'], maxN: 2 }],
      auth: {
        mode: ['api-key'],
        apiKeys: Object.entries(API_KEYS).map(([owner, key]) => ({ owner, sha256: createHash('sha256').update(key).digest('hex') })),
      },
      webhooks: webhooks as ConfigInput['webhooks'],
      metrics: { access: 'open' },
    },
    backends: new Map([['ctl', backend]]),
    webhookResolver: { lookup: RESOLVER.lookup, ca: TEST_CA },
    dataDir,
  });
  daemons.push(daemon);
  return { backend, daemon };
}

const auth = (owner: keyof typeof API_KEYS = 'alpha') => ({ authorization: `Bearer ${API_KEYS[owner]}` });

async function receiver(url: string, owner: keyof typeof API_KEYS = 'alpha'): Promise<WebhookReceiver> {
  const res = await fetch(`${url}/v1/webhooks/secret`, { headers: auth(owner) });
  const body = (await res.json()) as { secret: string };
  const r = await new WebhookReceiver(body.secret).start();
  receivers.push(r);
  return r;
}

async function submit(url: string, body: Record<string, unknown>, path = '/v1/async/images/generations', owner: keyof typeof API_KEYS = 'alpha') {
  const res = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...auth(owner) },
    body: JSON.stringify({ model: MODEL, size: '64x64', prompt: 'a heron', ...body }),
  });
  return { res, body: (await res.json()) as Record<string, any> };
}

async function poll(url: string, path: string, owner: keyof typeof API_KEYS = 'alpha') {
  return (await (await fetch(`${url}${path}`, { headers: auth(owner) })).json()) as Record<string, any>;
}

async function until<T>(what: string, read: () => Promise<T> | T, done: (value: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (done(value)) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(value)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function scrape(url: string): Promise<Exposition> {
  const res = await fetch(`${url}/metrics`);
  expect(res.status).toBe(200);
  return parseExposition(await res.text());
}

const ATTEMPTS = 'pixeld_webhook_deliveries_total';
const PENDING = 'pixeld_webhook_deliveries_pending';

/** The webhook figures of one scrape: short enough to print when a wait for them times out. */
async function webhookFigures(url: string) {
  const exp = await scrape(url);
  return {
    retry: valueOf(exp, ATTEMPTS, { outcome: 'retry' }),
    delivered: valueOf(exp, ATTEMPTS, { outcome: 'delivered' }),
    pending: valueOf(exp, PENDING),
    timed: valueOf(exp, 'pixeld_webhook_delivery_duration_seconds_count'),
  };
}

describe('webhook deliveries', () => {
  it('POSTs the finished 0G poll body, signed, once per id to a deduplicating receiver, retrying while it is down', async () => {
    const { backend, daemon } = await start();
    const hook = await receiver(daemon.url);
    hook.answers = [503, 204];
    const { res, body } = await submit(daemon.url, { webhook_url: hook.url('hooks.example.test') + '?token=abc' });
    expect(res.status).toBe(202);
    const jobId = body.jobId as string;
    const pending = await poll(daemon.url, `/v1/async/jobs/${jobId}`);
    expect(pending.webhook).toEqual({ url: `${hook.url('hooks.example.test')}?token=abc`, status: 'pending', attempts: 0 });

    await (await backend.nextCall()).succeed();
    // The first attempt gets 503; then the receiver goes down altogether (connection refused) …
    await until('a 503 answer', () => hook.received.length, (n) => n === 1);
    const port = hook.port;
    await hook.stop();
    const store = daemon.daemon.store;
    await until('an attempt against the stopped receiver', () => store.webhookDeliveries(jobId), ([d]) => d!.attempts >= 2);
    const whileDown = (await store.webhookDeliveries(jobId))[0]!;
    expect(whileDown).toMatchObject({ state: 'pending', lastStatus: undefined, lastError: expect.stringMatching(/^the connection failed/) });
    // … and comes back on the same port: the delivery goes through with the same webhook-id.
    await hook.start(port);
    await until('the delivery', () => hook.events.size, (n) => n === 1);
    await until('the delivered state', () => store.webhookDeliveries(jobId), ([d]) => d!.state === 'delivered');

    const ids = new Set(hook.received.map((r) => r.id));
    expect(ids.size).toBe(1);
    expect(hook.received.every((r) => r.verified)).toBe(true);
    expect(hook.received[0]!.path).toBe('/hooks/pixeld?token=abc');
    const [event] = [...hook.events.values()];
    const finished = await poll(daemon.url, `/v1/async/jobs/${jobId}`);
    const { webhook, ...pollBody } = finished;
    // The same body as the poll, the poll's own webhook field aside.
    expect(event!.body).toEqual(pollBody);
    expect(event!.body).toMatchObject({ jobId, status: 'completed', data: { data: [{ b64_json: expect.any(String) }] } });
    expect(webhook).toEqual({
      url: `${hook.url('hooks.example.test')}?token=abc`,
      status: 'delivered',
      id: event!.id,
      event: 'job.completed',
      attempts: expect.any(Number),
      lastAttemptAt: expect.stringMatching(/^\d{4}-/),
      lastStatusCode: 204,
      finishedAt: expect.stringMatching(/^\d{4}-/),
    });
    expect(webhook.attempts).toBe(hook.received.length + 1); // the refused connection reached no receiver
    // Delivered is final: nothing more arrives.
    await new Promise((r) => setTimeout(r, 300));
    expect(hook.received.length).toBe(webhook.attempts - 1);
  });

  it('announces failed and cancelled jobs too, in theRouter’s shape for ?async=true submits', async () => {
    const { backend, daemon } = await start();
    const hook = await receiver(daemon.url);
    const failing = await submit(daemon.url, { webhook_url: hook.url('hooks.example.test', '/a') }, '/v1/images/generations?async=true');
    expect(failing.res.status).toBe(202);
    const cancelled = await submit(daemon.url, { webhook_url: hook.url('hooks.example.test', '/b') }, '/v1/images/generations?async=true');
    (await backend.nextCall()).fail(new BackendError('ctl', 'rejected', 'the model refused', { status: 400 }));
    await fetch(`${daemon.url}/v1/jobs/${cancelled.body.id}/cancel`, { method: 'POST', headers: auth() });
    await until('two deliveries', () => hook.events.size, (n) => n === 2);
    const byPath = Object.fromEntries([...hook.events.values()].map((e) => [e.path, e.body]));
    expect(byPath['/a']).toMatchObject({ id: failing.body.id, object: 'image_job', status: 'failed', error: { code: 'upstream_error' } });
    expect(byPath['/b']).toMatchObject({ id: cancelled.body.id, status: 'cancelled', error: { code: 'job_cancelled' } });
    const polled = await until('the delivered state', () => poll(daemon.url, `/v1/jobs/${failing.body.id}`), (b) => b.webhook?.status === 'delivered');
    expect(polled.webhook).toMatchObject({ status: 'delivered', event: 'job.failed', attempts: 1, last_status_code: 204, finished_at: expect.any(Number) });
  });

  it('takes webhook_url on sync submits and multipart edits too', async () => {
    const { backend, daemon } = await start();
    const hook = await receiver(daemon.url);
    const sync = submit(daemon.url, { webhook_url: hook.url('hooks.example.test', '/sync') }, '/v1/images/generations');
    await (await backend.nextCall()).succeed();
    const answered = await sync;
    expect(answered.res.status).toBe(200);
    const png = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#336699' } }).png().toBuffer();
    const form = new FormData();
    form.set('model', MODEL);
    form.set('prompt', 'make it winter');
    form.set('size', '64x64');
    form.set('webhook_url', hook.url('hooks.example.test', '/edit'));
    form.set('image', new Blob([png], { type: 'image/png' }), 'photo.png');
    const edit = await fetch(`${daemon.url}/v1/async/images/edits`, { method: 'POST', headers: auth(), body: form });
    expect(edit.status).toBe(202);
    const { jobId } = (await edit.json()) as { jobId: string };
    await (await backend.nextCall()).succeed();
    await until('two deliveries', () => hook.events.size, (n) => n === 2);
    const byPath = Object.fromEntries([...hook.events.values()].map((e) => [e.path, e.body]));
    expect(byPath['/sync']).toMatchObject({ id: answered.res.headers.get('x-job-id'), object: 'image_job', status: 'succeeded' });
    expect(byPath['/sync']!.result.data[0].b64_json).toBe(answered.body.data[0].b64_json);
    expect(byPath['/edit']).toMatchObject({ jobId, status: 'completed' });
  });

  it('delivers after a daemon restart between attempts, with the same webhook-id', async () => {
    const dataDir = tempDir();
    try {
      const first = await start(undefined, dataDir);
      const hook = await receiver(first.daemon.url);
      hook.answers = [500];
      const { body } = await submit(first.daemon.url, { webhook_url: hook.url('hooks.example.test') });
      await (await first.backend.nextCall()).succeed();
      await until('a failed attempt', () => hook.received.length, (n) => n >= 1);
      await first.daemon.close();
      daemons = daemons.filter((d) => d !== first.daemon);
      const seenBefore = hook.received.length;
      hook.answers = [200];

      const second = await start(undefined, dataDir);
      await until('the delivery after the restart', () => hook.events.size, (n) => n === 1);
      expect(hook.received.length).toBeGreaterThan(seenBefore);
      expect(new Set(hook.received.map((r) => r.id)).size).toBe(1);
      expect([...hook.events.values()][0]!.body).toMatchObject({ jobId: body.jobId, status: 'completed' });
      const polled = await until('delivered', () => poll(second.daemon.url, `/v1/async/jobs/${body.jobId}`), (b) => b.webhook?.status === 'delivered');
      expect(polled.webhook.lastStatusCode).toBe(200);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('sends an attempt cut off by a stop again right after the restart, not when its lease would have run out', async () => {
    const dataDir = tempDir();
    try {
      const first = await start(undefined, dataDir);
      const hook = await receiver(first.daemon.url);
      hook.answers = [0, 204];
      const { body } = await submit(first.daemon.url, { webhook_url: hook.url('hooks.example.test') });
      await (await first.backend.nextCall()).succeed();
      await until('the hanging attempt', () => hook.received.length, (n) => n === 1);
      await first.daemon.close();
      daemons = daemons.filter((d) => d !== first.daemon);

      const restarted = Date.now();
      const second = await start(undefined, dataDir);
      // The lease is 2 × attemptTimeoutMs + 10 s = 14 s; the stop recorded the attempt as due at once instead.
      await until('the delivery after the restart', () => hook.events.size, (n) => n === 1, 5_000);
      expect(Date.now() - restarted).toBeLessThan(5_000);
      expect(new Set(hook.received.map((r) => r.id)).size).toBe(1);
      const [delivery] = await until('the delivered state', () => second.daemon.daemon.store.webhookDeliveries(body.jobId), ([d]) => d?.state === 'delivered');
      expect(delivery!.attempts).toBe(2);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('gives up at 410 Gone, and after retryForMs', async () => {
    const { backend, daemon } = await start({ allowPrivate: ['127.0.0.1/32'], ...FAST_RETRIES, retryForMs: 250 });
    const gone = await receiver(daemon.url);
    gone.answers = [410];
    const flaky = await receiver(daemon.url);
    flaky.answers = [503];
    const a = await submit(daemon.url, { webhook_url: gone.url('hooks.example.test') });
    await (await backend.nextCall()).succeed();
    const b = await submit(daemon.url, { webhook_url: flaky.url('hooks.example.test') });
    await (await backend.nextCall()).succeed();
    const store = daemon.daemon.store;
    const [goneDelivery] = await until('410 recorded', () => store.webhookDeliveries(a.body.jobId), ([d]) => d?.state === 'failed');
    expect(goneDelivery).toMatchObject({ attempts: 1, lastStatus: 410, lastError: expect.stringContaining('410 Gone') });
    const [flakyDelivery] = await until('giving up', () => store.webhookDeliveries(b.body.jobId), ([d]) => d?.state === 'failed');
    expect(flakyDelivery!.lastError).toMatch(/^the receiver answered HTTP 503; gave up after \d+ attempts/);
    expect(flaky.received.length).toBe(flakyDelivery!.attempts);
    expect(gone.received).toHaveLength(1);
    const exp = await scrape(daemon.url);
    expect(valueOf(exp, ATTEMPTS, { outcome: 'gone' })).toBe(1);
    expect(valueOf(exp, ATTEMPTS, { outcome: 'gave_up' })).toBe(1);
    expect(valueOf(exp, ATTEMPTS, { outcome: 'retry' })).toBe(flakyDelivery!.attempts - 1);
    expect(valueOf(exp, ATTEMPTS, { outcome: 'delivered' })).toBe(0);
    expect(valueOf(exp, PENDING)).toBe(0);
  });

  it('counts attempts by outcome and times them in /metrics; the pending gauge drops to 0 once delivered', async () => {
    // A retry 0.5–1 s later: the scrape that sees the 503 counted sees the delivery still pending.
    const { backend, daemon } = await start({ allowPrivate: ['127.0.0.1/32'], ...FAST_RETRIES, firstRetryDelayMs: 1_000, maxRetryDelayMs: 1_000 });
    const hook = await receiver(daemon.url);
    hook.answers = [503, 200];
    const before = await scrape(daemon.url);
    expect(before.types.get(ATTEMPTS)).toBe('counter');
    expect(before.types.get(PENDING)).toBe('gauge');
    expect(before.types.get('pixeld_webhook_delivery_duration_seconds')).toBe('histogram');
    // Every outcome has its series from the start, at 0.
    const outcomes = before.samples.filter((s) => s.name === ATTEMPTS).map((s) => s.labels.outcome);
    expect(outcomes.sort()).toEqual(['delivered', 'gave_up', 'gone', 'interrupted', 'refused', 'retry']);
    expect(valueOf(before, ATTEMPTS)).toBe(0);
    expect(valueOf(before, PENDING)).toBe(0);

    const { body } = await submit(daemon.url, { webhook_url: hook.url('hooks.example.test') });
    await (await backend.nextCall()).succeed();
    const retrying = await until('the 503 counted', () => webhookFigures(daemon.url), (f) => f.retry === 1);
    expect(retrying).toEqual({ retry: 1, delivered: 0, pending: 1, timed: 1 });

    const delivered = await until(
      'the delivery counted and recorded',
      () => webhookFigures(daemon.url),
      (f) => f.delivered === 1 && f.pending === 0,
    );
    expect(delivered).toEqual({ retry: 1, delivered: 1, pending: 0, timed: 2 });
    const after = await scrape(daemon.url);
    expect(valueOf(after, ATTEMPTS)).toBe(2);
    expect(hook.received).toHaveLength(2);
    // Two loopback answers take well under the attempt timeout, and more than nothing.
    const seconds = valueOf(after, 'pixeld_webhook_delivery_duration_seconds_sum');
    expect(seconds).toBeGreaterThan(0);
    expect(seconds).toBeLessThan(FAST_RETRIES.attemptTimeoutMs / 1000);
    // Neither the URL, the owner nor the job shows in a label.
    const labelValues = after.samples.flatMap((s) => Object.values(s.labels));
    expect(labelValues.some((v) => v.includes('hooks.example.test') || v.includes('alpha') || v.includes(body.jobId as string))).toBe(false);
  });

  it('gives up at once when the address is refused at delivery, and counts it as refused', async () => {
    const { backend, daemon } = await start();
    const hook = await receiver(daemon.url);
    const { res, body } = await submit(daemon.url, { webhook_url: hook.url('rebind.example.test') });
    expect(res.status).toBe(202);
    await (await backend.nextCall()).succeed();
    const [delivery] = await until('the refusal recorded', () => daemon.daemon.store.webhookDeliveries(body.jobId), ([d]) => d?.state === 'failed');
    expect(delivery).toMatchObject({ attempts: 1, lastStatus: undefined, lastError: 'webhook_url: rebind.example.test is not a public internet address' });
    expect(hook.received).toEqual([]);
    const figures = await scrape(daemon.url);
    expect(valueOf(figures, ATTEMPTS, { outcome: 'refused' })).toBe(1);
    expect(valueOf(figures, ATTEMPTS)).toBe(1);
    expect(valueOf(figures, PENDING)).toBe(0);
  });

  it('does not follow a redirect: the attempt fails and the target never hears of it', async () => {
    const { backend, daemon } = await start();
    const target = await receiver(daemon.url);
    const redirecting = await receiver(daemon.url);
    redirecting.answers = [307];
    redirecting.answerHeaders = { location: target.url('other.example.test') };
    const { body } = await submit(daemon.url, { webhook_url: redirecting.url('hooks.example.test') });
    await (await backend.nextCall()).succeed();
    const [delivery] = await until('a redirect recorded', () => daemon.daemon.store.webhookDeliveries(body.jobId), ([d]) => (d?.attempts ?? 0) >= 2);
    expect(delivery).toMatchObject({ state: 'pending', lastStatus: 307, lastError: 'the receiver answered HTTP 307 (redirects are not followed)' });
    expect(target.received).toEqual([]);
  });

  it('signs each owner’s deliveries with that owner’s own secret, served only to the owner', async () => {
    const { backend, daemon } = await start();
    const alpha = await (await fetch(`${daemon.url}/v1/webhooks/secret`, { headers: auth('alpha') })).json() as Record<string, string>;
    const beta = await (await fetch(`${daemon.url}/v1/webhooks/secret`, { headers: auth('beta') })).json() as Record<string, string>;
    expect(alpha).toEqual({ object: 'webhook_secret', owner: 'alpha', secret: expect.stringMatching(/^whsec_[A-Za-z0-9+/]{43}=$/) });
    expect(beta.owner).toBe('beta');
    expect(beta.secret).not.toBe(alpha.secret);
    expect((await fetch(`${daemon.url}/v1/webhooks/secret`)).status).toBe(401);
    // Beta's job, checked by a receiver holding alpha's secret: the signature does not verify.
    const hook = await receiver(daemon.url, 'alpha');
    await submit(daemon.url, { webhook_url: hook.url('hooks.example.test') }, undefined, 'beta');
    await (await backend.nextCall()).succeed();
    await until('a delivery', () => hook.received.length, (n) => n >= 1);
    expect(hook.received[0]!.verified).toBe(false);
    expect(hook.events.size).toBe(0);
  });

  it('uses the owner’s configured URL when a submit names none', async () => {
    const hook = await new WebhookReceiver('').start();
    receivers.push(hook);
    const { backend, daemon } = await start({
      allowPrivate: ['127.0.0.1/32'],
      ...FAST_RETRIES,
      ownerUrls: { beta: hook.url('hooks.example.test', '/beta') },
    });
    hook.secret = ((await (await fetch(`${daemon.url}/v1/webhooks/secret`, { headers: auth('beta') })).json()) as { secret: string }).secret;
    const { body } = await submit(daemon.url, {}, undefined, 'beta');
    await (await backend.nextCall()).succeed();
    await until('the delivery', () => hook.events.size, (n) => n === 1);
    expect([...hook.events.values()][0]).toMatchObject({ path: '/beta', body: { jobId: body.jobId, status: 'completed' } });
    // Alpha has none configured: its jobs announce nothing.
    const plain = await submit(daemon.url, {}, undefined, 'alpha');
    await (await backend.nextCall()).succeed();
    expect(await daemon.daemon.store.webhookDeliveries(plain.body.jobId)).toEqual([]);
    expect((await poll(daemon.url, `/v1/async/jobs/${plain.body.jobId}`)).webhook).toBeUndefined();
  });
});

describe('webhook URLs the SSRF guard refuses at submit (400, no job)', () => {
  const refusals: Array<[string, string, RegExp]> = [
    ['plain http', 'http://hooks.example.test/x', /must be an https URL \(not http:\)/],
    ['not a URL', 'hooks.example.test/x', /must be an absolute https URL/],
    ['credentials in the URL', 'https://user:pw@hooks.example.test/x', /must not carry credentials/],
    ['a private address', 'https://10.0.0.5/x', /10\.0\.0\.5 is not a public internet address/],
    ['the metadata endpoint', 'https://169.254.169.254/latest', /is not a public internet address/],
    ['IPv6 loopback', 'https://[::1]/x', /::1 is not a public internet address/],
    ['localhost', 'https://localhost/x', /localhost is not a public internet address/],
    ['a name resolving to a private address', 'https://inside.example.test/x', /inside\.example\.test is not a public internet address/],
    ['a name with one private address among public ones', 'https://mixed.example.test/x', /is not a public internet address/],
    ['a name that does not resolve', 'https://nowhere.example.test/x', /does not resolve/],
  ];
  it.each(refusals)('refuses %s', async (_what, url, message) => {
    // No allow-list: loopback is as private as any other.
    const { backend, daemon } = await start({ ...FAST_RETRIES });
    const { res, body } = await submit(daemon.url, { webhook_url: url });
    expect(res.status).toBe(400);
    expect(body.error).toMatchObject({ type: 'invalid_request_error', code: 'invalid_request', param: 'webhook_url', message: expect.stringMatching(message) });
    expect(backend.calls).toHaveLength(0);
  });

  it('lets the allow-list open exactly the networks and names it lists', async () => {
    const { daemon } = await start({ ...FAST_RETRIES, allowPrivate: ['127.0.0.1/32', 'inside.example.test'] });
    expect((await submit(daemon.url, { webhook_url: 'https://hooks.example.test/x' })).res.status).toBe(202);
    expect((await submit(daemon.url, { webhook_url: 'https://inside.example.test/x' })).res.status).toBe(202);
    expect((await submit(daemon.url, { webhook_url: 'https://10.0.0.5/x' })).res.status).toBe(400);
    expect((await submit(daemon.url, { webhook_url: 'https://[::1]/x' })).res.status).toBe(400);
  });
});
