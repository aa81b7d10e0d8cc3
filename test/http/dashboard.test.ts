import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { DASHBOARD_CSP, THUMBNAIL_PX, WRONG_TOKENS_PER_MINUTE } from '../../src/http/routes/dashboard.js';
import { SESSION_COOKIE, SESSION_MS } from '../../src/http/dashboard/session.js';
import { openDevKeyProvider } from '../../src/tee/dev-key.js';
import { startFakeDstackAgent } from '../fakes/dstack-guest-agent.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

const MODEL = 'ref-model';
const ADMIN_TOKEN = 'dashboard-test-admin-token';

/** `null`: no admin token configured. */
function config(adminToken: string | null = ADMIN_TOKEN): Partial<ConfigInput> {
  return {
    backends: [{ id: 'ref', type: 'reference', concurrency: 1, latencyMsPerImage: 1 } as ConfigInput['backends'][number]],
    models: [{ id: MODEL, backend: 'ref', capabilities: ['generation'], sizes: ['64x64', '256x128'], maxN: 4 }],
    admin: adminToken === null ? {} : { tokenSha256: createHash('sha256').update(adminToken).digest('hex') },
  };
}

let daemon: TestDaemon | undefined;
afterEach(async () => {
  await daemon?.close();
  daemon = undefined;
});

const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };

async function login(url: string, token: string): Promise<Response> {
  return fetch(`${url}/dashboard/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }).toString(),
    redirect: 'manual',
  });
}

/** The `name=value` of the session cookie a response sets. */
function sessionCookie(res: Response): string {
  const set = res.headers.getSetCookie().find((c) => c.startsWith(`${SESSION_COOKIE}=`));
  expect(set).toBeDefined();
  return set!.split(';')[0]!;
}

async function completedJob(url: string, size = '64x64', n = 1): Promise<string> {
  const res = await fetch(`${url}/v1/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, size, prompt: 'a secret prompt', n }),
  });
  expect(res.status).toBe(200);
  return res.headers.get('x-job-id')!;
}

describe('/dashboard', () => {
  it('logs in with the admin token: an HttpOnly, SameSite=Strict cookie under /dashboard that opens the API; logout clears it', async () => {
    daemon = await startTestDaemon({ config: config() });
    const { url } = daemon;

    const form = await fetch(`${url}/dashboard`);
    expect(form.status).toBe(200);
    const formHtml = await form.text();
    expect(formHtml).toContain('<form method="post" action="/dashboard/login"');
    expect(formHtml).not.toContain('id="jobs"');

    const res = await login(url, ADMIN_TOKEN);
    expect(res.status).toBe(303);
    expect(res.headers.get('location')).toBe('/dashboard');
    const set = res.headers.getSetCookie().find((c) => c.startsWith(`${SESSION_COOKIE}=`))!;
    expect(set).toMatch(/; HttpOnly/i);
    expect(set).toMatch(/; SameSite=Strict/i);
    expect(set).toMatch(/; Path=\/dashboard(;|$)/i);
    expect(set).toMatch(new RegExp(`; Max-Age=${SESSION_MS / 1000}`, 'i'));
    // Plain http here: not Secure (the browser would drop it); over https it is.
    expect(set).not.toMatch(/; Secure/i);
    // The cookie carries neither the token nor its hash.
    expect(set).not.toContain(ADMIN_TOKEN);
    expect(set).not.toContain(createHash('sha256').update(ADMIN_TOKEN).digest('hex'));
    const cookie = sessionCookie(res);

    const page = await fetch(`${url}/dashboard`, { headers: { cookie } });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('id="jobs"');
    const state = await fetch(`${url}/dashboard/api/state`, { headers: { cookie } });
    expect(state.status).toBe(200);
    expect(state.headers.get('cache-control')).toBe('no-store');
    // The page polls every 5 s: its request lines are debug, not info.
    const requestId = state.headers.get('x-request-id');
    await expect.poll(() => daemon!.logs.find((l) => l.message === 'request' && l.requestId === requestId)).toMatchObject({ level: 'debug', status: 200 });

    const out = await fetch(`${url}/dashboard/logout`, { method: 'POST', headers: { cookie }, redirect: 'manual' });
    expect(out.status).toBe(303);
    const cleared = out.headers.getSetCookie().find((c) => c.startsWith(`${SESSION_COOKIE}=`))!;
    expect(cleared).toMatch(new RegExp(`^${SESSION_COOKIE}=;`));
    expect(cleared).toMatch(/Expires=Thu, 01 Jan 1970/);
    expect(cleared).toMatch(/; Path=\/dashboard(;|$)/i);
  });

  it('refuses a wrong token with the form again (401), and a client that keeps trying with 429', async () => {
    daemon = await startTestDaemon({ config: config() });
    const { url } = daemon;
    const wrong = await login(url, 'not-the-token');
    expect(wrong.status).toBe(401);
    expect(wrong.headers.getSetCookie()).toEqual([]);
    const html = await wrong.text();
    expect(html).toContain('Wrong admin token.');
    expect(html).toContain('<form method="post" action="/dashboard/login"');
    expect((await login(url, '')).status).toBe(401);
    // Not the form (a script's JSON, a hostile body): 415, and no guess spent.
    for (let i = 0; i < WRONG_TOKENS_PER_MINUTE; i += 1) {
      const json = await fetch(`${url}/dashboard/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"token":"x"}' });
      expect(json.status).toBe(415);
      expect(await json.json()).toMatchObject({ error: { code: 'unsupported_media_type' } });
    }

    for (let i = 2; i < WRONG_TOKENS_PER_MINUTE; i += 1) expect((await login(url, `wrong-${i}`)).status).toBe(401);
    const limited = await login(url, ADMIN_TOKEN);
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(await limited.text()).toContain('Too many wrong tokens');
    // A wrong bearer token is a wrong token too.
    const api = await fetch(`${url}/dashboard/api/state`, { headers: admin });
    expect(api.status).toBe(429);
    // No token was ever logged.
    expect(JSON.stringify(daemon.logs)).not.toContain(ADMIN_TOKEN);
    expect(daemon.logs.filter((l) => l.message === 'dashboard: wrong admin token')).toHaveLength(WRONG_TOKENS_PER_MINUTE);
  });

  it('answers the API only to a session or the bearer token: none, a wrong bearer, a forged or expired cookie get 401', async () => {
    let nowMs = Date.now();
    daemon = await startTestDaemon({ config: config(), now: () => nowMs });
    const { url } = daemon;
    const noAuth = await fetch(`${url}/dashboard/api/state`);
    expect(noAuth.status).toBe(401);
    expect(await noAuth.json()).toMatchObject({ error: { code: 'invalid_admin_token', type: 'authentication_error' } });
    expect((await fetch(`${url}/dashboard/api/state`, { headers: { authorization: 'Bearer nope' } })).status).toBe(401);
    expect((await fetch(`${url}/dashboard/api/state`, { headers: admin })).status).toBe(200);

    const cookie = sessionCookie(await login(url, ADMIN_TOKEN));
    const [name, value] = cookie.split('=') as [string, string];
    const [v, expires, mac] = value.split('.') as [string, string, string];
    // A later expiry under the same mac, and a mac made with another key, are both refused.
    const forged = [
      `${name}=${v}.${Number(expires) + 1000}.${mac}`,
      `${name}=${v}.${expires}.${Buffer.alloc(32, 7).toString('base64url')}`,
      `${name}=garbage`,
    ];
    for (const c of forged) expect((await fetch(`${url}/dashboard/api/state`, { headers: { cookie: c } })).status).toBe(401);
    // Another replica with the same admin token accepts it (nothing is stored); after SESSION_MS nobody does.
    expect((await fetch(`${url}/dashboard/api/state`, { headers: { cookie: `other=1; ${cookie}` } })).status).toBe(200);
    nowMs += SESSION_MS;
    expect((await fetch(`${url}/dashboard/api/state`, { headers: { cookie } })).status).toBe(401);
    const page = await fetch(`${url}/dashboard`, { headers: { cookie } });
    expect(await page.text()).toContain('action="/dashboard/login"');
  });

  it('accepts a session cookie from another daemon with the same admin token and TEE key, not from one with another token or key', async () => {
    // Replicas share the TEE key; a daemon on another key (another data dir's dev key) is another provider.
    const keyDir = mkdtempSync(path.join(tmpdir(), 'pixeld-dashboard-key-'));
    const sharedKey = openDevKeyProvider({ dataDir: keyDir, nodeEnv: 'test', allowInProduction: false });
    daemon = await startTestDaemon({ config: config(), tee: sharedKey });
    const other = await startTestDaemon({ config: config('another-token'), tee: sharedKey });
    const twin = await startTestDaemon({ config: config(), tee: sharedKey });
    const otherKey = await startTestDaemon({ config: config() });
    try {
      const cookie = sessionCookie(await login(daemon.url, ADMIN_TOKEN));
      expect((await fetch(`${twin.url}/dashboard/api/state`, { headers: { cookie } })).status).toBe(200);
      expect((await fetch(`${other.url}/dashboard/api/state`, { headers: { cookie } })).status).toBe(401);
      // Knowing the config (the token's sha256) is not enough to mint a session: the TEE key is part of it.
      expect(otherKey.daemon.tee.address).not.toBe(sharedKey.address);
      expect((await fetch(`${otherKey.url}/dashboard/api/state`, { headers: { cookie } })).status).toBe(401);
    } finally {
      await other.close();
      await twin.close();
      await otherKey.close();
      rmSync(keyDir, { recursive: true, force: true });
    }
  });

  it('is closed without an admin token', async () => {
    daemon = await startTestDaemon({ config: config(null) });
    const page = await fetch(`${daemon.url}/dashboard`);
    expect(page.status).toBe(401);
    const html = await page.text();
    expect(html).toContain('The dashboard is closed');
    expect(html).not.toContain('<form method="post" action="/dashboard/login"');
    expect((await login(daemon.url, 'anything')).status).toBe(401);
    expect((await fetch(`${daemon.url}/dashboard/api/state`, { headers: { authorization: 'Bearer anything' } })).status).toBe(401);
  });

  it('sets its own CSP (no inline script, no framing) and leaves the API’s as helmet sets it; its assets are versioned and cached', async () => {
    daemon = await startTestDaemon({ config: config() });
    const { url } = daemon;
    const apiCsp = (await fetch(`${url}/healthz`)).headers.get('content-security-policy');
    expect(apiCsp).toContain("script-src 'self'");
    expect(apiCsp).not.toBe(DASHBOARD_CSP);

    const page = await fetch(`${url}/dashboard`, { headers: admin });
    expect(page.headers.get('content-security-policy')).toBe(DASHBOARD_CSP);
    expect(DASHBOARD_CSP).toContain("frame-ancestors 'none'");
    expect(DASHBOARD_CSP).not.toContain('unsafe-inline');
    expect(page.headers.get('x-frame-options')).toBe('DENY');
    expect(page.headers.get('cache-control')).toBe('no-store');
    const html = await page.text();
    // Every script is a file of ours: no inline code, no handler attributes, nothing from another origin.
    const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/g)];
    expect(scripts).toHaveLength(1);
    expect(scripts[0]![2]).toBe('');
    expect(html).not.toMatch(/\son[a-z]+=/i);
    expect(html).not.toMatch(/\sstyle=/i);
    expect(html).not.toMatch(/(src|href)="(https?:)?\/\//);
    const assetPaths = [...html.matchAll(/(?:src|href)="(\/dashboard\/assets\/[^"]+)"/g)].map((m) => m[1]!);
    expect(assetPaths).toEqual([
      expect.stringMatching(/^\/dashboard\/assets\/favicon\.[0-9a-f]{12}\.svg$/),
      expect.stringMatching(/^\/dashboard\/assets\/dashboard\.[0-9a-f]{12}\.css$/),
      expect.stringMatching(/^\/dashboard\/assets\/dashboard\.[0-9a-f]{12}\.js$/),
    ]);
    for (const asset of assetPaths) {
      const res = await fetch(`${url}${asset}`);
      expect(res.status).toBe(200);
      expect(res.headers.get('cache-control')).toBe('public, max-age=31536000, immutable');
      expect(res.headers.get('content-type')).toMatch({ js: /^text\/javascript/, css: /^text\/css/, svg: /^image\/svg\+xml/ }[asset.split('.').pop()!]!);
      const body = await res.text();
      expect(createHash('sha256').update(body).digest('hex').slice(0, 12)).toBe(/\.([0-9a-f]{12})\./.exec(asset)![1]);
      // Nothing fetched from another origin (the SVG namespace is a name, not a fetch).
      expect(body).not.toMatch(/https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    }
    expect((await fetch(`${url}/dashboard/assets/dashboard.000000000000.js`)).status).toBe(404);
  });

  it('serves the state: queue, recent jobs with thumbnail URLs, activity, earnings, attestation; never a prompt', async () => {
    daemon = await startTestDaemon({ config: config() });
    const { url } = daemon;
    const id = await completedJob(url, '64x64', 2);
    const res = await fetch(`${url}/dashboard/api/state`, { headers: admin });
    const state = (await res.json()) as Record<string, any>;
    expect(JSON.stringify(state)).not.toContain('a secret prompt');
    expect(state.ready).toBe(true);
    expect(state.backends).toEqual([{ id: 'ref', type: 'reference', pending: 0, running: 0, concurrency: 1, health: 'ok' }]);
    expect(state.jobs[0]).toMatchObject({
      id,
      status: 'completed',
      expired: false,
      model: MODEL,
      owner: 'anonymous',
      images: 2,
      thumbnails: [`/dashboard/thumbs/${id}/0`, `/dashboard/thumbs/${id}/1`],
    });
    expect(state.activity.buckets).toHaveLength(61);
    expect(state.activity.buckets.reduce((n: number, b: { succeeded: number }) => n + b.succeeded, 0)).toBe(1);
    expect(state.attestation).toMatchObject({ tee: 'none', signing_address: daemon.daemon.tee.address, quote_binds_signer: null, error: null });
    expect(state.attestation.report_ms).toEqual(expect.any(Number));
    // A free model: no receipt.
    expect(state.earnings.totals).toMatchObject({ receipts: 0, settled: { wei: '0', og: '0.0' } });
    expect(state.settlement).toEqual({ enabled: false, running: false, next_scheduled_ms: null, batches: [] });
  });

  it('in dstack mode shows that the quote binds this signer', async () => {
    const agent = await startFakeDstackAgent();
    try {
      daemon = await startTestDaemon({ config: { ...config(), tee: { mode: 'dstack', dstack: { endpoint: agent.socketPath } } } });
      const state = (await (await fetch(`${daemon.url}/dashboard/api/state`, { headers: admin })).json()) as Record<string, any>;
      expect(state.attestation).toMatchObject({
        tee: 'dstack',
        signing_address: daemon.daemon.tee.address,
        quote_provider: 'dstack-guest-agent',
        quote_binds_signer: true,
        error: null,
      });
    } finally {
      await daemon?.close();
      daemon = undefined;
      await agent.close();
    }
  });

  it('serves a thumbnail of a result image as webp within 96 px, admin-only, and a grey box once the result expired', async () => {
    let nowMs = Date.now();
    daemon = await startTestDaemon({ config: config(), now: () => nowMs });
    const { url } = daemon;
    const id = await completedJob(url, '256x128');
    expect((await fetch(`${url}/dashboard/thumbs/${id}/0`)).status).toBe(401);
    const res = await fetch(`${url}/dashboard/thumbs/${id}/0`, { headers: admin });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/webp');
    const meta = await sharp(Buffer.from(await res.arrayBuffer())).metadata();
    expect(meta).toMatchObject({ format: 'webp', width: THUMBNAIL_PX, height: THUMBNAIL_PX / 2 });

    expect((await fetch(`${url}/dashboard/thumbs/${id}/1`, { headers: admin })).status).toBe(404);
    expect((await fetch(`${url}/dashboard/thumbs/${id}/x`, { headers: admin })).status).toBe(404);
    expect((await fetch(`${url}/dashboard/thumbs/job_${'0'.repeat(32)}/0`, { headers: admin })).status).toBe(404);

    nowMs += 400 * 24 * 3600 * 1000;
    const expired = await fetch(`${url}/dashboard/thumbs/${id}/0`, { headers: admin });
    expect(expired.status).toBe(200);
    const box = await sharp(Buffer.from(await expired.arrayBuffer())).metadata();
    expect(box).toMatchObject({ format: 'webp', width: THUMBNAIL_PX, height: THUMBNAIL_PX });
    const state = (await (await fetch(`${url}/dashboard/api/state`, { headers: admin })).json()) as Record<string, any>;
    expect(state.jobs[0]).toMatchObject({ id, expired: true, thumbnails: [] });
  });
});
