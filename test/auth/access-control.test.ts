import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Wallet } from 'ethers';
import type { ConfigInput } from '../../src/config/schema.js';
import {
  as,
  createFundedAccount,
  deployInferenceServing,
  mined,
  setAccountAcknowledged,
  startAnvil,
  type Anvil,
  type InferenceServingContract,
} from '../chain/anvil.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { makeSessionToken } from '../helpers/session-token.js';

/**
 * Who may call, against a real chain: anvil running the project's InferenceServing, tokens made with
 * ethers the way 0G's SDK makes them, and the daemon's real chain reads.
 */

const CACHE_MS = 400;
const API_KEY = 'sk-router-x-0123456789';

let anvil: Anvil;
let serving: InferenceServingContract;
let provider: Wallet;
let alice: Wallet;
let bob: Wallet;
let carol: Wallet; // account exists but is not acknowledged
let dave: Wallet; // no account at all
const daemons: TestDaemon[] = [];

function config(extra: Partial<ConfigInput> = {}): Partial<ConfigInput> {
  return {
    auth: {
      mode: ['0g', 'api-key'],
      apiKeys: [{ owner: 'router-x', sha256: createHash('sha256').update(API_KEY).digest('hex') }],
      chainCacheMs: CACHE_MS,
    },
    chain: { rpcUrl: anvil.rpcUrl, chainId: anvil.chainId, servingAddress: serving.target as string },
    provider: { address: provider.address },
    backends: [{ id: 'reference', type: 'reference' }],
    models: [{ id: 'ref', backend: 'reference', capabilities: ['generation', 'edit'], sizes: ['64x64'] }],
    ...extra,
  };
}

async function daemon(extra: Partial<ConfigInput> = {}): Promise<TestDaemon> {
  const d = await startTestDaemon({ config: config(extra) });
  daemons.push(d);
  return d;
}

beforeAll(async () => {
  anvil = await startAnvil();
  const [owner, p, a, b, c, d] = anvil.wallets as [Wallet, Wallet, Wallet, Wallet, Wallet, Wallet];
  provider = p;
  alice = a;
  bob = b;
  carol = c;
  dave = d;
  serving = (await deployInferenceServing(owner)).contract;
  await createFundedAccount(serving, alice, provider.address, 10n ** 18n);
  await createFundedAccount(serving, bob, provider.address, 10n ** 18n);
  await createFundedAccount(serving, carol, provider.address, 0n);
  await setAccountAcknowledged(serving, carol, provider.address, false);
}, 120_000);

afterAll(async () => {
  for (const d of daemons) await d.close();
  await anvil?.stop();
});

async function generate(url: string, authorization?: string) {
  const res = await fetch(`${url}/v1/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(authorization ? { authorization } : {}) },
    body: JSON.stringify({ prompt: 'who am I', size: '64x64' }),
  });
  return { res, body: (await res.json()) as Record<string, any> };
}

async function submit(url: string, authorization: string) {
  const res = await fetch(`${url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization },
    body: JSON.stringify({ prompt: 'mine', size: '64x64' }),
  });
  return { res, body: (await res.json()) as Record<string, any> };
}

const bearer = async (wallet: Wallet, fields: Parameters<typeof makeSessionToken>[1] = { provider: provider.address }) =>
  `Bearer ${await makeSessionToken(wallet, fields)}`;
const waitOutCache = () => new Promise((r) => setTimeout(r, CACHE_MS + 100));

describe('0G session tokens on a real chain', () => {
  it('admits a valid ephemeral token and a valid persistent one, and records the user as owner', async () => {
    const d = await daemon();
    const ephemeral = await generate(d.url, await bearer(alice));
    expect(ephemeral.res.status).toBe(200);
    const job = await d.daemon.store.get(ephemeral.res.headers.get('x-job-id')!);
    expect(job!.owner).toBe(alice.address);
    const persistent = await generate(d.url, await bearer(alice, { provider: provider.address.toLowerCase(), tokenId: 3, expiresAt: 0 }));
    expect(persistent.res.status).toBe(200);
  });

  it.each([
    ['for another provider', () => ({ provider: bob.address }), /another provider/],
    ['expired', () => ({ provider: provider.address, timestamp: Date.now() - 7_200_000, expiresAt: Date.now() - 1_000 }), /expired/],
    ['ephemeral over 24 h', () => ({ provider: provider.address, expiresAt: Date.now() + 25 * 3_600_000 }), /24 hours/],
    ['with a stale generation', () => ({ provider: provider.address, generation: 7 }), /generation/],
  ])('refuses a token %s with 401 invalid_api_key', async (_name, fields, message) => {
    const d = await daemon();
    const { res, body } = await generate(d.url, await bearer(alice, fields()));
    expect(res.status).toBe(401);
    expect(body.error).toMatchObject({ code: 'invalid_api_key', type: 'authentication_error' });
    expect(body.error.message).toMatch(message);
    expect(res.headers.get('x-should-retry')).toBe('false');
  });

  it('refuses a bad signature and a token altered after signing', async () => {
    const d = await daemon();
    const forged = `Bearer ${await makeSessionToken(bob, { provider: provider.address, address: alice.address })}`;
    expect((await generate(d.url, forged)).res.status).toBe(401);
    const altered = `Bearer ${await makeSessionToken(alice, { provider: provider.address, expiresAt: Date.now() + 60_000 }, (raw) =>
      raw.replace(/"expiresAt":\d+/, `"expiresAt":${Date.now() + 3_600_000}`),
    )}`;
    expect((await generate(d.url, altered)).res.status).toBe(401);
  });

  it('refuses an account that is not acknowledged, and an address with no account', async () => {
    const d = await daemon();
    const notAcked = await generate(d.url, await bearer(carol));
    expect(notAcked.res.status).toBe(401);
    expect(notAcked.body.error.message).toMatch(/acknowledged/);
    const unknown = await generate(d.url, await bearer(dave));
    expect(unknown.res.status).toBe(401);
    expect(unknown.body.error.message).toMatch(/no account/);
  });

  it('refuses every token of an account once it bumps its generation, after the cache window', async () => {
    const d = await daemon();
    const [, , , , , , user] = anvil.wallets as Wallet[];
    await createFundedAccount(serving, user!, provider.address, 10n ** 17n);
    const token = await bearer(user!);
    expect((await generate(d.url, token)).res.status).toBe(200);
    await mined(as(serving, user!).revokeAllTokens(provider.address));
    await waitOutCache();
    const refused = await generate(d.url, token);
    expect(refused.res.status).toBe(401);
    expect(refused.body.error.message).toMatch(/generation/);
    // A token made for the new generation works.
    expect((await generate(d.url, await bearer(user!, { provider: provider.address, generation: 1 }))).res.status).toBe(200);
  });

  it('refuses a revoked persistent token id, after the cache window, and keeps the others', async () => {
    const d = await daemon();
    const [, , , , , , , user] = anvil.wallets as Wallet[];
    await createFundedAccount(serving, user!, provider.address, 10n ** 17n);
    const revoked = await bearer(user!, { provider: provider.address, tokenId: 9, expiresAt: 0 });
    const kept = await bearer(user!, { provider: provider.address, tokenId: 10, expiresAt: 0 });
    expect((await generate(d.url, revoked)).res.status).toBe(200);
    await mined(as(serving, user!).revokeToken(provider.address, 9));
    await waitOutCache();
    const refused = await generate(d.url, revoked);
    expect(refused.res.status).toBe(401);
    expect(refused.body.error.message).toMatch(/revoked/);
    expect((await generate(d.url, kept)).res.status).toBe(200);
  });

  it('answers 503 chain_unavailable, never admits, when the RPC is down', async () => {
    const d = await daemon({
      chain: { rpcUrl: 'http://127.0.0.1:9', chainId: anvil.chainId, servingAddress: serving.target as string, rpcTimeoutMs: 1_000 },
    });
    const { res, body } = await generate(d.url, await bearer(alice));
    expect(res.status).toBe(503);
    expect(body.error.code).toBe('chain_unavailable');
    expect(res.headers.get('retry-after')).toBe('5');
    expect(await d.daemon.store.countUnfinishedForModel('ref')).toBe(0);
  });
});

describe('credentials and ownership', () => {
  it('refuses missing and unknown credentials with 401, and admits a configured API key', async () => {
    const d = await daemon();
    const missing = await generate(d.url);
    expect(missing.res.status).toBe(401);
    expect(missing.body.error.code).toBe('invalid_api_key');
    expect((await generate(d.url, 'Bearer sk-nope')).res.status).toBe(401);
    expect((await generate(d.url, 'Basic abc')).res.status).toBe(401);
    const ok = await generate(d.url, `Bearer ${API_KEY}`);
    expect(ok.res.status).toBe(200);
    expect((await d.daemon.store.get(ok.res.headers.get('x-job-id')!))!.owner).toBe('router-x');
  });

  it('lets only the owner poll or cancel; others get 404 as for a job that does not exist; signatures stay open', async () => {
    const d = await daemon();
    const aliceAuth = await bearer(alice);
    const bobAuth = await bearer(bob);
    const { body } = await submit(d.url, aliceAuth);
    const id = body.jobId as string;
    for (const other of [bobAuth, `Bearer ${API_KEY}`]) {
      const poll = await fetch(`${d.url}/v1/async/jobs/${id}`, { headers: { authorization: other } });
      expect(poll.status).toBe(404);
      expect(((await poll.json()) as Record<string, any>).error.code).toBe('job_not_found');
      expect((await fetch(`${d.url}/v1/jobs/${id}`, { headers: { authorization: other } })).status).toBe(404);
      expect((await fetch(`${d.url}/v1/async/jobs/${id}/cancel`, { method: 'POST', headers: { authorization: other } })).status).toBe(404);
    }
    expect((await fetch(`${d.url}/v1/async/jobs/${id}`)).status).toBe(401);
    const mine = await fetch(`${d.url}/v1/async/jobs/${id}?wait=10`, { headers: { authorization: aliceAuth } });
    expect(((await mine.json()) as Record<string, any>).status).toBe('completed');
    // 0G's SDK fetches signatures with no credentials.
    const signature = await fetch(`${d.url}/v1/proxy/signature/${id}`);
    expect(signature.status).toBe(200);
    expect(((await signature.json()) as Record<string, any>).receipt.user).toBe(alice.address);
    expect((await fetch(`${d.url}/v1/proxy/signature/job_${'0'.repeat(32)}`)).status).toBe(404);
  });
});

describe('limits', () => {
  it('rate-limits each owner with 429, Retry-After and X-RateLimit headers', async () => {
    const d = await daemon({ rateLimits: { requestsPerMinute: 2, imagesPerMinute: 100 } });
    const auth = `Bearer ${API_KEY}`;
    const first = await submit(d.url, auth);
    expect(first.res.headers.get('x-ratelimit-limit')).toBe('2');
    expect(first.res.headers.get('x-ratelimit-remaining')).toBe('1');
    await submit(d.url, auth);
    const limited = await submit(d.url, auth);
    expect(limited.res.status).toBe(429);
    expect(limited.body.error.code).toBe('rate_limit_exceeded');
    expect(Number(limited.res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(limited.res.headers.get('x-ratelimit-remaining')).toBe('0');
    // Another owner has its own allowance.
    expect((await submit(d.url, await bearer(alice))).res.status).toBe(202);
  });

  it('caps the jobs in flight per model across owners', async () => {
    const d = await daemon({
      backends: [{ id: 'reference', type: 'reference', latencyMsPerImage: 2_000 }],
      models: [{ id: 'ref', backend: 'reference', capabilities: ['generation'], sizes: ['64x64'], maxInFlight: 1 }],
    });
    expect((await submit(d.url, `Bearer ${API_KEY}`)).res.status).toBe(202);
    const busy = await submit(d.url, await bearer(alice));
    expect(busy.res.status).toBe(429);
    expect(busy.body.error.code).toBe('model_busy');
  });
});
