import { createHash } from 'node:crypto';
import { hashMessage, recoverAddress, Wallet } from 'ethers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackendError } from '../../src/backends/errors.js';
import { buildUserTree, leafHashOf, receiptLeaf, verifyLeaf } from '../../src/billing/leaf.js';
import type { ConfigInput } from '../../src/config/schema.js';
import {
  createFundedAccount,
  deployInferenceServing,
  registerService,
  serviceParams,
  startAnvil,
  type Anvil,
  type InferenceServingContract,
} from '../chain/anvil.js';
import { ControlledBackend } from '../helpers/controlled-backend.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { makeSessionToken } from '../helpers/session-token.js';

/**
 * Receipts and admission against a real chain: what a job may reserve comes from the user's on-chain
 * balance; what is billed is what was delivered, in a receipt written with the completion.
 */

const PRICE = 3_000_000_000_000_000n; // 0.003 0G per image
const API_KEY = 'sk-offchain-router';

let anvil: Anvil;
let serving: InferenceServingContract;
let provider: Wallet;
let users: Wallet[];
const daemons: TestDaemon[] = [];

beforeAll(async () => {
  anvil = await startAnvil();
  const [owner, p] = anvil.wallets as [Wallet, Wallet];
  provider = p;
  serving = (await deployInferenceServing(owner)).contract;
  // The priced model as `pixeld register` publishes it: 0G users are never billed above the chain's price.
  await registerService(serving, provider, serviceParams(Wallet.createRandom().address, { model: 'paid', outputPrice: PRICE }));
  users = await anvil.fundWallets(8, 10n ** 20n);
  // Room for three images each (0.01 0G), except users[7] who has plenty.
  for (const u of users.slice(0, 7)) await createFundedAccount(serving, u, provider.address, 10_000_000_000_000_000n);
  await createFundedAccount(serving, users[7]!, provider.address, 10n ** 19n);
}, 120_000);

afterAll(async () => {
  for (const d of daemons) await d.close();
  await anvil?.stop();
});

async function daemon(backend?: ControlledBackend, extra: Partial<ConfigInput> = {}): Promise<TestDaemon> {
  const d = await startTestDaemon({
    config: {
      auth: { mode: ['0g', 'api-key'], apiKeys: [{ owner: 'router-x', sha256: createHash('sha256').update(API_KEY).digest('hex') }], chainCacheMs: 0 },
      chain: { rpcUrl: anvil.rpcUrl, chainId: anvil.chainId, servingAddress: serving.target as string },
      provider: { address: provider.address },
      backends: [{ id: 'gpu', type: 'reference', concurrency: 4, maxImagesPerCall: 4 }],
      models: [
        { id: 'paid', backend: 'gpu', capabilities: ['generation'], sizes: ['64x64'], pricePerImageWei: PRICE.toString() },
        { id: 'free', backend: 'gpu', capabilities: ['generation'], sizes: ['64x64'] },
      ],
      jobs: { maxTopUpCalls: 0, retryBackoffMs: 10, maxAttempts: 1 },
      ...extra,
    },
    backends: backend ? new Map([['gpu', backend]]) : undefined,
  });
  daemons.push(d);
  return d;
}

const auth = async (user: Wallet) => `Bearer ${await makeSessionToken(user, { provider: provider.address })}`;

async function generate(url: string, authorization: string, body: Record<string, unknown>) {
  const res = await fetch(`${url}/v1/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization },
    body: JSON.stringify({ model: 'paid', prompt: 'billable', size: '64x64', ...body }),
  });
  return { res, body: (await res.json()) as Record<string, any> };
}

async function submit(url: string, authorization: string, body: Record<string, unknown>) {
  const res = await fetch(`${url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization },
    body: JSON.stringify({ model: 'paid', prompt: 'billable', size: '64x64', ...body }),
  });
  return { res, body: (await res.json()) as Record<string, any> };
}

describe('receipts', () => {
  it('writes one receipt per completed job, for the images delivered, with a leaf that hashes and proves', async () => {
    const d = await daemon();
    const user = users[0]!;
    const authorization = await auth(user);
    const { res } = await generate(d.url, authorization, { n: 2 });
    expect(res.status).toBe(200);
    const jobId = res.headers.get('zg-res-key')!;
    const got = await fetch(`${d.url}/v1/receipts/${jobId}`, { headers: { authorization } });
    expect(got.status).toBe(200);
    const body = (await got.json()) as Record<string, any>;
    expect(body).toMatchObject({ job_id: jobId, state: 'unsettled', settlement: null });
    expect(body.receipt).toMatchObject({ job: jobId, user: user.address, provider: provider.address, images: 2, fee_wei: (2n * PRICE).toString() });
    expect(recoverAddress(hashMessage(body.receipt.text), body.receipt.signature)).toBe(d.daemon.tee.address);
    expect(body.leaf.values).toEqual(receiptLeaf(body.receipt));
    expect(body.leaf.hash).toBe(leafHashOf(body.leaf.values));
    const tree = buildUserTree([body.leaf.values]);
    expect(verifyLeaf(tree.root, body.leaf.values, tree.proofs[0]!)).toBe(true);

    const fee = await fetch(`${d.url}/v1/user/${user.address.toLowerCase()}/unsettledfee`, { headers: { authorization } });
    expect(await fee.json()).toEqual({ unsettledFee: (2n * PRICE).toString() });
  });

  it('bills only delivered images, and nothing for failed jobs', async () => {
    const backend = new ControlledBackend('gpu');
    const d = await daemon(backend);
    const user = users[1]!;
    const authorization = await auth(user);
    const short = generate(d.url, authorization, { n: 3 });
    await (await backend.nextCall()).succeed(2);
    const { res } = await short;
    expect(res.status).toBe(200);
    const receipt = (await (await fetch(`${d.url}/v1/receipts/${res.headers.get('zg-res-key')}`, { headers: { authorization } })).json()) as Record<string, any>;
    expect(receipt.receipt).toMatchObject({ images: 2, fee_wei: (2n * PRICE).toString() });

    const failing = generate(d.url, authorization, { n: 1 });
    (await backend.nextCall()).fail(new BackendError('gpu', 'rejected', 'bad prompt', { status: 400 }));
    const failed = await failing;
    expect(failed.res.status).toBe(502);
    const jobId = failed.res.headers.get('x-job-id')!;
    expect((await fetch(`${d.url}/v1/receipts/${jobId}`, { headers: { authorization } })).status).toBe(404);
    expect(await d.daemon.billing.getReceipt(jobId)).toBeUndefined();
  });

  it('shows a receipt and the unsettled fee to their owner only', async () => {
    const d = await daemon();
    const owner = await auth(users[7]!);
    const { res } = await generate(d.url, owner, { n: 1 });
    const jobId = res.headers.get('zg-res-key')!;
    const other = await auth(users[6]!);
    expect((await fetch(`${d.url}/v1/receipts/${jobId}`, { headers: { authorization: other } })).status).toBe(404);
    expect((await fetch(`${d.url}/v1/receipts/${jobId}`)).status).toBe(401);
    expect((await fetch(`${d.url}/v1/user/${users[7]!.address}/unsettledfee`, { headers: { authorization: other } })).status).toBe(404);
  });

  it('lists the caller’s own receipts in pages, lowest sequence first, from a time; anyone else’s user is 403', async () => {
    const d = await daemon();
    const me = users[7]!;
    const authorization = await auth(me);
    const jobIds: string[] = [];
    for (let i = 0; i < 3; i += 1) jobIds.push((await generate(d.url, authorization, { n: 1 })).res.headers.get('zg-res-key')!);
    await generate(d.url, await auth(users[6]!), { n: 1 });
    await generate(d.url, `Bearer ${API_KEY}`, { n: 1 });
    const list = async (query: string, authz = authorization) => {
      const res = await fetch(`${d.url}/v1/receipts${query}`, { headers: { authorization: authz } });
      return { status: res.status, body: (await res.json()) as Record<string, any> };
    };
    const first = await list(`?user=${me.address.toLowerCase()}&limit=2`);
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ object: 'list', has_more: true, next_after: '2' });
    expect(first.body.data.map((r: any) => [r.job_id, r.seq, r.state])).toEqual([
      [jobIds[0], '1', 'unsettled'],
      [jobIds[1], '2', 'unsettled'],
    ]);
    const r0 = first.body.data[0];
    expect(recoverAddress(hashMessage(r0.receipt.text), r0.receipt.signature)).toBe(d.daemon.tee.address);
    expect(r0.leaf.values).toEqual(receiptLeaf(r0.receipt));
    expect(r0.settlement).toBeNull();
    const second = await list('?limit=2&after=2');
    expect(second.body).toMatchObject({ has_more: false, next_after: null });
    expect(second.body.data.map((r: any) => r.job_id)).toEqual([jobIds[2]]);
    const created = r0.receipt.created as number;
    expect((await list(`?since=${created + 3600}`)).body.data).toEqual([]);
    expect((await list(`?since=${new Date((created - 60) * 1000).toISOString()}`)).body.data).toHaveLength(3);

    const other = await list(`?user=${users[6]!.address}`);
    expect(other.status).toBe(403);
    expect(other.body.error).toMatchObject({ code: 'forbidden', type: 'permission_error', param: 'user' });
    expect((await list('?user=router-x')).status).toBe(403);
    expect((await list('?limit=0')).status).toBe(400);
    expect((await list('?after=x')).status).toBe(400);
    expect((await fetch(`${d.url}/v1/receipts`)).status).toBe(401);

    const router = await list('', `Bearer ${API_KEY}`);
    expect(router.body.data.map((r: any) => [r.receipt.user, r.state, r.leaf])).toEqual([['router-x', 'offchain', null]]);
    expect((await list(`?user=${me.address}`, `Bearer ${API_KEY}`)).status).toBe(403);
  });

  it('keeps API-key routers’ receipts off chain, and free models bill nothing', async () => {
    const d = await daemon();
    const viaKey = await generate(d.url, `Bearer ${API_KEY}`, { n: 1 });
    const receipt = await d.daemon.billing.getReceipt(viaKey.res.headers.get('zg-res-key')!);
    expect(receipt).toMatchObject({ user: 'router-x', state: 'offchain', feeWei: PRICE });
    const free = await generate(d.url, await auth(users[7]!), { model: 'free' });
    expect(free.res.status).toBe(200);
    expect(await d.daemon.billing.getReceipt(free.res.headers.get('zg-res-key')!)).toBeUndefined();
  });
});

describe('admission reserves n × price against the on-chain balance', () => {
  it('refuses with 402 stating need and availability once unsettled receipts use the balance', async () => {
    const d = await daemon();
    const authorization = await auth(users[2]!);
    expect((await generate(d.url, authorization, { n: 2 })).res.status).toBe(200);
    const refused = await generate(d.url, authorization, { n: 2 });
    expect(refused.res.status).toBe(402);
    expect(refused.body.error).toMatchObject({ code: 'insufficient_credits', type: 'insufficient_credits' });
    expect(refused.body.error.message).toContain(`needs ${2n * PRICE} wei`);
    expect(refused.body.error.message).toContain(`${10_000_000_000_000_000n - 2n * PRICE} wei`);
    expect(refused.res.headers.get('x-should-retry')).toBe('false');
    expect((await generate(d.url, authorization, { n: 1 })).res.status).toBe(200);
  });

  it('counts the reservations of unfinished jobs, and refuses before any backend work', async () => {
    const backend = new ControlledBackend('gpu');
    const d = await daemon(backend);
    const authorization = await auth(users[3]!);
    const first = await submit(d.url, authorization, { n: 3 });
    expect(first.res.status).toBe(202);
    const call = await backend.nextCall();
    const second = await submit(d.url, authorization, { n: 1 });
    expect(second.res.status).toBe(402);
    expect(backend.calls).toHaveLength(1);
    // The reservation ends with the job: a short delivery frees what was not billed.
    await call.succeed(2);
    await fetch(`${d.url}/v1/async/jobs/${first.body.jobId}?wait=10`, { headers: { authorization } });
    expect((await submit(d.url, authorization, { n: 1 })).res.status).toBe(202);
  });

  it('lets concurrent submits spend each wei once', async () => {
    const backend = new ControlledBackend('gpu');
    const d = await daemon(backend);
    const authorization = await auth(users[4]!);
    const results = await Promise.all(Array.from({ length: 6 }, () => submit(d.url, authorization, { n: 1 })));
    const statuses = results.map((r) => r.res.status).sort();
    expect(statuses).toEqual([202, 202, 202, 402, 402, 402]);
  });
});
