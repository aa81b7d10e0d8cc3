import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Wallet } from 'ethers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEV_KEY_FILE } from '../../src/tee/dev-key.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { makeSessionToken } from '../helpers/session-token.js';
import { secretsIn } from './harness/billing-child.js';
import { killAllChildren, runChildToExit, startChild } from './harness/child-daemon.js';
import { recordFigures } from './harness/figures.js';
import { MODE, SEED, SIZES } from './harness/mode.js';

/**
 * Who can read or drive what, from the outside: other callers' jobs, receipts and signatures read exactly
 * like ids that do not exist — same status, same body but for the id, same headers, no measurable time
 * difference; the admin routes open to the admin token only; no secret the daemon holds or is sent ever
 * reaches its log; helmet's headers are on error and admin answers too, CORS stays closed; dev TEE mode
 * refuses to start in production. The dependency audit's result is recorded here (see AUDIT).
 */

const KEY_A = `sk-a-${randomBytes(16).toString('hex')}`;
const KEY_B = `sk-b-${randomBytes(16).toString('hex')}`;
const ADMIN_TOKEN = `adm-${randomBytes(24).toString('hex')}`;
const sha = (s: string) => createHash('sha256').update(s).digest('hex');

/**
 * The dependency audit, recorded: the suite cannot run `npm audit` (it needs the network), and on this
 * sandbox the registry mirror answers its advisories endpoint with 405 Method Not Allowed (2026-11-21 and
 * -22). Instead, on 2026-11-22, 42 packages of the production tree (every direct dependency and the
 * transitive ones with a history of advisories) were checked by hand against published GitHub advisories.
 */
const AUDIT = {
  result:
    '`npm audit --omit=dev --audit-level=high` could not run (the registry mirror answers the advisories endpoint with 405). ' +
    'Checked by hand on 2026-11-22, 42 production packages against published GitHub advisories: sharp 0.34.5 was hit by ' +
    'GHSA-f88m-g3jw-g9cj and GHSA-rgj7-g3m4-5g8c (high; libvips and libheif, reachable through uploads), now 0.35.5; ethers pinned ' +
    'ws 8.21.0 (GHSA-73jw-fp74-p77x), now overridden to the project\'s ws 8.23.0; no other high or critical advisory found. ' +
    'Run `npm audit` where the public registry is reachable',
  verdict: 'clean by hand, not by npm audit',
};

let t: TestDaemon;
const figures: Record<string, number | string | boolean> = {};

beforeAll(async () => {
  t = await startTestDaemon({
    config: {
      auth: {
        mode: 'api-key',
        apiKeys: [
          { owner: 'router-a', sha256: sha(KEY_A) },
          { owner: 'router-b', sha256: sha(KEY_B) },
        ],
      },
      admin: { tokenSha256: sha(ADMIN_TOKEN) },
      rateLimits: { requestsPerMinute: 1_000_000, imagesPerMinute: 1_000_000 },
      backends: [{ id: 'reference', type: 'reference', concurrency: 2, latencyMsPerImage: 0 }],
      models: [{ id: 'pix', backend: 'reference', capabilities: ['generation'], sizes: ['64x64'], maxN: 2, pricePerImageWei: '1000' }],
    },
  });
}, 60_000);

afterAll(async () => {
  await killAllChildren();
  await t?.close();
});

interface Seen {
  status: number;
  body: string;
  headerNames: string;
  ms: number;
}

async function get(url: string, auth?: string, method = 'GET'): Promise<Seen> {
  const started = performance.now();
  const res = await fetch(url, { method, headers: auth ? { authorization: auth } : {} });
  const body = await res.text();
  const ms = performance.now() - started;
  const headerNames = [...res.headers.keys()].filter((h) => h !== 'date' && h !== 'x-request-id').sort().join(',');
  return { status: res.status, body, headerNames, ms };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * Asks for `mine` (another owner's id) and `unknown` alternately and compares: the answers must be the same
 * but for the id, and the median times within noise. Returns the median difference in ms.
 */
async function compareProbe(route: (id: string) => string, auth: string | undefined, mine: string, unknown: string, method = 'GET'): Promise<number> {
  const a: number[] = [];
  const b: number[] = [];
  // Warm both paths first (JIT, statement cache).
  for (let i = 0; i < 20; i += 1) {
    await get(`${t.url}${route(mine)}`, auth, method);
    await get(`${t.url}${route(unknown)}`, auth, method);
  }
  for (let i = 0; i < SIZES.timingSamples; i += 1) {
    const first = i % 2 === 0;
    const x = await get(`${t.url}${route(first ? mine : unknown)}`, auth, method);
    const y = await get(`${t.url}${route(first ? unknown : mine)}`, auth, method);
    const [m, u] = first ? [x, y] : [y, x];
    expect(m.status).toBe(404);
    expect(u.status).toBe(404);
    expect(m.body.replaceAll(mine, '<id>')).toBe(u.body.replaceAll(unknown, '<id>'));
    expect(m.headerNames).toBe(u.headerNames);
    a.push(m.ms);
    b.push(u.ms);
  }
  const diff = median(a) - median(b);
  // Within 0.5 ms or 25 % of the faster median, whichever is larger: scheduling noise, not a database hit.
  expect(Math.abs(diff), `others' ${median(a).toFixed(3)} ms vs unknown ${median(b).toFixed(3)} ms`).toBeLessThan(Math.max(0.5, 0.25 * Math.min(median(a), median(b))));
  return Number(diff.toFixed(3));
}

describe(`security (${MODE})`, () => {
  it('others’ jobs, receipts and signature-less ids read exactly like ids that do not exist, in content and in time', async () => {
    const submit = async (key: string) => {
      const res = await fetch(`${t.url}/v1/images/generations`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
        body: JSON.stringify({ prompt: 'mine', response_format: 'url' }),
      });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { data: Array<{ url: string }> };
      return { id: res.headers.get('x-job-id')!, url: body.data[0]!.url };
    };
    const a = await submit(KEY_A);
    const unknown = `job_${randomBytes(16).toString('hex')}`;
    const asB = `Bearer ${KEY_B}`;
    figures.pollTimingDiffMs = await compareProbe((id) => `/v1/async/jobs/${id}`, asB, a.id, unknown);
    await compareProbe((id) => `/v1/jobs/${id}`, asB, a.id, unknown);
    await compareProbe((id) => `/v1/async/jobs/${id}/cancel`, asB, a.id, unknown, 'POST');
    figures.receiptTimingDiffMs = await compareProbe((id) => `/v1/receipts/${id}`, asB, a.id, unknown);
    // A result file with the right job and a wrong token reads like an unknown job's.
    const token = a.url.split('/').at(-2)!;
    const wrongToken = randomBytes(16).toString('hex');
    await compareProbe((id) => `/v1/files/${id}/${wrongToken}/0.png`, undefined, a.id, unknown);
    expect(token).toMatch(/^[0-9a-f]{32}$/);
    // Signatures are open (0G's SDK sends no credentials; the id is the capability): a job without one — here
    // cancelled before it ran — reads exactly like an unknown id.
    const pending = await fetch(`${t.url}/v1/async/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY_A}` },
      body: JSON.stringify({ prompt: 'cancel me', n: 2 }),
    });
    const pendingId = ((await pending.json()) as { jobId: string }).jobId;
    await fetch(`${t.url}/v1/async/jobs/${pendingId}/cancel`, { method: 'POST', headers: { authorization: `Bearer ${KEY_A}` } });
    const cancelled = await t.daemon.store.get(pendingId);
    if (cancelled?.status === 'cancelled') {
      figures.signatureTimingDiffMs = await compareProbe((id) => `/v1/signature/${id}`, undefined, pendingId, unknown);
    } else {
      // It ran before the cancel arrived: compare a malformed id instead, which must read the same as well.
      figures.signatureTimingDiffMs = await compareProbe((id) => `/v1/signature/${id}`, undefined, `job_${'g'.repeat(32)}`, unknown);
    }
    // Ill-formed ids are the same 404 too (never a 500, never a path lookup).
    for (const bad of ['job_..%2F..%2Fetc%2Fpasswd', `job_${'A'.repeat(32)}`, "job_' OR 1=1 --", 'x'.repeat(5_000)]) {
      const res = await get(`${t.url}/v1/async/jobs/${bad}`, asB);
      expect(res.status).toBe(404);
    }
    // The owner does see it.
    expect((await get(`${t.url}/v1/async/jobs/${a.id}`, `Bearer ${KEY_A}`)).status).toBe(200);
    // Regression: an API-key caller's own receipt was a 500 (its `offchain` leaf names no address to encode).
    const own = await get(`${t.url}/v1/receipts/${a.id}`, `Bearer ${KEY_A}`);
    expect(own.status, own.body).toBe(200);
    expect(JSON.parse(own.body)).toMatchObject({ job_id: a.id, state: 'offchain', leaf: null, receipt: { user: 'router-a', images: 1 } });
    figures.probeSamples = SIZES.timingSamples;
    figures.probeOk = true;
  }, 300_000);

  it('admin routes open to the admin token only, compared as hashes; closed to everyone when none is configured', { timeout: 60_000 }, async () => {
    const refusals: Array<[string, string | undefined]> = [
      ['no credentials', undefined],
      ['a wrong token', `Bearer adm-${randomBytes(24).toString('hex')}`],
      ['the token with its last character changed', `Bearer ${ADMIN_TOKEN.slice(0, -1)}${ADMIN_TOKEN.endsWith('0') ? '1' : '0'}`],
      ['the token with a suffix', `Bearer ${ADMIN_TOKEN}x`],
      ['the token upper-cased', `Bearer ${ADMIN_TOKEN.toUpperCase()}`],
      ['its sha256', `Bearer ${sha(ADMIN_TOKEN)}`],
      ['a job API key', `Bearer ${KEY_A}`],
      ['basic auth', `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')}`],
      ['a 10 kB token', `Bearer ${'a'.repeat(10_000)}`],
    ];
    let refused = 0;
    for (const [what, auth] of refusals) {
      for (const [method, route] of [
        ['GET', '/v1/admin/metrics'],
        ['POST', '/v1/admin/settle'],
        ['GET', '/v1/admin/anything'],
      ] as const) {
        const res = await fetch(`${t.url}${route}`, { method, headers: auth ? { authorization: auth } : {} });
        const body = (await res.json()) as { error: { code: string; type: string } };
        expect({ what, route, status: res.status, code: body.error.code }).toEqual({ what, route, status: 401, code: 'invalid_admin_token' });
        expect(body.error.type).toBe('authentication_error');
        refused += 1;
      }
    }
    const job = await fetch(`${t.url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY_B}` },
      body: JSON.stringify({ prompt: 'counted' }),
    });
    expect(job.status).toBe(200);
    const ok = await fetch(`${t.url}/v1/admin/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(ok.status).toBe(200);
    const metrics = (await ok.json()) as { runner: { jobsCompleted: number; backends: Record<string, unknown> }; storage: { accepting_work: boolean } };
    expect(metrics.runner.jobsCompleted).toBeGreaterThan(0);
    expect(Object.keys(metrics.runner.backends)).toEqual(['reference']);
    expect(metrics.storage.accepting_work).toBe(true);
    const settle = await fetch(`${t.url}/v1/admin/settle`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect({ status: settle.status, code: ((await settle.json()) as { error: { code: string } }).error.code }).toEqual({ status: 501, code: 'settlement_off' });

    // No admin key in the config: nothing opens the routes.
    const closed = await startTestDaemon();
    try {
      for (const auth of [undefined, `Bearer ${ADMIN_TOKEN}`, 'Bearer ']) {
        const res = await fetch(`${closed.url}/v1/admin/metrics`, { headers: auth ? { authorization: auth } : {} });
        expect(res.status).toBe(401);
        refused += 1;
      }
    } finally {
      await closed.close();
    }
    figures.adminRefusals = refused;
    figures.adminOk = true;
  });

  it('helmet headers on errors and admin answers too; CORS closed to a foreign origin', async () => {
    let checked = 0;
    for (const [route, auth] of [
      ['/v1/admin/metrics', undefined],
      ['/v1/admin/metrics', `Bearer ${ADMIN_TOKEN}`],
      ['/v1/async/jobs/job_00000000000000000000000000000000', `Bearer ${KEY_A}`],
      ['/no/such/route', undefined],
    ] as const) {
      const res = await fetch(`${t.url}${route}`, { headers: { origin: 'https://evil.example', ...(auth ? { authorization: auth } : {}) } });
      expect(res.headers.get('x-content-type-options')).toBe('nosniff');
      expect(res.headers.get('x-frame-options')).toBe('SAMEORIGIN');
      expect(res.headers.get('content-security-policy')).toContain("default-src 'self'");
      expect(res.headers.get('access-control-allow-origin')).toBeNull();
      checked += 1;
    }
    figures.headersChecked = checked;
    figures.corsClosed = true;
    figures.headersOk = true;
  });

  it('dev TEE mode refuses NODE_ENV=production, and starts only when forced', { timeout: 120_000 }, async () => {
    const root = mkdtempSync(path.join(tmpdir(), 'pixeld-prod-'));
    try {
      const config = { backends: [{ id: 'reference', type: 'reference' }], models: [{ id: 'm', backend: 'reference', capabilities: ['generation'], sizes: ['64x64'] }] };
      const refused = await runChildToExit({ name: 'dev in production', dataDir: path.join(root, 'a'), config, env: { NODE_ENV: 'production' } });
      expect(refused.exit, refused.output).toEqual({ code: 2, signal: null });
      expect(refused.output).toMatch(/refuses to run with NODE_ENV=production/);
      expect(refused.output).not.toMatch(/pixeld listening/);
      const forced = await startChild({ name: 'forced', dataDir: path.join(root, 'b'), config: { ...config, tee: { mode: 'dev', allowDevInProduction: true } }, env: { NODE_ENV: 'production' } });
      expect(forced.output).toMatch(/tee\.mode is \\?"dev\\?"/);
      expect((await forced.kill('SIGTERM')).code).toBe(0);
      figures.devInProduction = 'refused (exit 2) unless tee.allowDevInProduction';
      figures.devInProductionRefused = true;
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('no secret reaches the log of a full run at debug level: provider key, TEE key, API keys, admin token, session tokens', { timeout: 120_000 }, async () => {
    const root = mkdtempSync(path.join(tmpdir(), 'pixeld-secrets-'));
    const providerKey = Wallet.createRandom().privateKey;
    const sessionToken = await makeSessionToken(new Wallet(Wallet.createRandom().privateKey), { provider: new Wallet(providerKey).address });
    try {
      const dataDir = path.join(root, 'data');
      const child = await startChild({
        name: 'secrets',
        dataDir,
        logLevel: 'debug',
        config: {
          auth: { mode: 'api-key', apiKeys: [{ owner: 'router-a', env: 'PIXELD_TEST_KEY_A' }, { owner: 'router-b', sha256: sha(KEY_B) }] },
          admin: { tokenEnv: 'PIXELD_TEST_ADMIN' },
          backends: [{ id: 'reference', type: 'reference', latencyMsPerImage: 0 }],
          models: [{ id: 'm', backend: 'reference', capabilities: ['generation'], sizes: ['64x64'], pricePerImageWei: '5' }],
        },
        env: { PIXELD_PROVIDER_KEY: providerKey, PIXELD_TEST_KEY_A: KEY_A, PIXELD_TEST_ADMIN: ADMIN_TOKEN },
      });
      const call = (route: string, auth: string | undefined, body?: unknown) =>
        fetch(`${child.url}${route}`, {
          method: body === undefined ? 'GET' : 'POST',
          headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) },
          body: body === undefined ? undefined : JSON.stringify(body),
        }).then(async (r) => ({ status: r.status, id: r.headers.get('x-job-id'), text: await r.text() }));
      const done = await call('/v1/images/generations', `Bearer ${KEY_A}`, { prompt: 'logged?' });
      expect(done.status).toBe(200);
      await call(`/v1/async/jobs/${done.id}`, `Bearer ${KEY_A}`);
      await call(`/v1/receipts/${done.id}`, `Bearer ${KEY_A}`);
      await call(`/v1/signature/${done.id}`, undefined);
      await call('/v1/async/images/generations', `Bearer ${KEY_B}`, { prompt: 'b' });
      // Refused credentials of every kind, each of which a careless log line would print.
      for (const auth of [`Bearer ${KEY_A.slice(0, -1)}x`, `Bearer ${sessionToken}`, `Bearer ${ADMIN_TOKEN}`, `Bearer ${providerKey}`, `Basic ${KEY_A}`]) {
        expect((await call('/v1/images/generations', auth, { prompt: 'x' })).status).toBe(401);
      }
      await call('/v1/admin/metrics', `Bearer ${ADMIN_TOKEN}`);
      await call('/v1/admin/metrics', `Bearer ${KEY_A}`);
      await call('/v1/admin/settle', `Bearer ${ADMIN_TOKEN}`, {});
      await call('/v1/images/generations', `Bearer ${KEY_A}`, { prompt: 'bad', size: '1x1' });
      expect((await child.kill('SIGTERM')).code).toBe(0);
      const teeKey = readFileSync(path.join(dataDir, DEV_KEY_FILE), 'utf8').trim();
      const secrets = {
        'provider wallet key': providerKey.slice(2),
        'TEE signing key': teeKey.slice(2),
        'API key A': KEY_A,
        'API key B': KEY_B,
        'admin token': ADMIN_TOKEN,
        'session token': sessionToken,
      };
      const log = `${child.output}\n${t.logs.map((l) => JSON.stringify(l)).join('\n')}`;
      // The run really was logged at debug level (one line per request at least).
      expect(child.logLines().filter((l) => l.message === 'request').length).toBeGreaterThanOrEqual(12);
      const found = secretsIn(log, secrets);
      figures.secretsChecked = Object.keys(secrets).length;
      figures.logBytes = log.length;
      figures.secretsFound = found.length;
      expect(found).toEqual([]);
      expect(log).not.toContain('app-sk-');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('records the figures and the dependency audit', () => {
    figures.audit = AUDIT.result;
    figures.auditVerdict = AUDIT.verdict;
    recordFigures({ scenario: 'security', mode: MODE, seed: SEED, values: figures });
    expect(figures.probeOk && figures.adminOk && figures.headersOk && figures.devInProductionRefused).toBe(true);
  });
});
