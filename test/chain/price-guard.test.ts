/**
 * Prices the chain advertises (issue 12, item 8), against pixeld's InferenceServing on a real anvil node:
 * a 0G user is never billed more than the provider's on-chain service advertises for the model.
 */
import { createHash } from 'node:crypto';
import { Writable } from 'node:stream';
import { Wallet } from 'ethers';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createPriceGuard, type PriceGuard, type PriceGuardDeps } from '../../src/chain/price-guard.js';
import { createChainClient, type ChainClient } from '../../src/chain/serving-contract.js';
import { buildServiceParams } from '../../src/commands/register.js';
import type { ConfigInput, ModelConfig } from '../../src/config/schema.js';
import { PixeldError } from '../../src/errors.js';
import { createLogger } from '../../src/obs/logger.js';
import {
  createFundedAccount,
  deployInferenceServing,
  registerService,
  serviceParams,
  startAnvil,
  type Anvil,
  type InferenceServingContract,
} from './anvil.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { startRpcProxy, type RpcProxy } from '../helpers/rpc-proxy.js';
import { makeSessionToken } from '../helpers/session-token.js';

const PRICE = 2_000_000_000_000_000n; // 0.002 0G per image
const INTERVAL_MS = 300_000;
const UNCHECKED_RETRY_MS = 15_000;
const API_KEY = 'sk-router-price-guard';

let anvil: Anvil;
let serving: InferenceServingContract;
let provider: Wallet;
let user: Wallet;
const tee = Wallet.createRandom();

beforeAll(async () => {
  anvil = await startAnvil();
  const [owner, p, u] = anvil.wallets as [Wallet, Wallet, Wallet];
  provider = p;
  user = u;
  serving = (await deployInferenceServing(owner)).contract;
  await createFundedAccount(serving, user, provider.address, 10n ** 18n);
}, 120_000);

afterAll(async () => {
  await anvil?.stop();
});

let snapshot = '';
beforeEach(async () => {
  snapshot = await anvil.snapshot();
});
afterEach(async () => {
  await anvil.revert(snapshot);
});

// ------------------------------------------------------------------------------------ helpers

/** The provider's service for `model` at `outputPrice` (first call registers, later ones update). */
async function advertise(model: string, outputPrice: bigint): Promise<void> {
  await registerService(serving, provider, serviceParams(tee.address, { model, outputPrice }));
}

function model(id: string, pricePerImageWei: bigint): Pick<ModelConfig, 'id' | 'pricePerImageWei'> {
  return { id, pricePerImageWei };
}

/** A one-shot timer the test fires by hand; `fire()` resolves once the guard has armed the next one. */
class ManualTimer {
  armed: { delayMs: number; onFire: () => void } | undefined;
  private rearmed: Array<() => void> = [];

  readonly startTimer = (delayMs: number, onFire: () => void): (() => void) => {
    const timer = { delayMs, onFire };
    this.armed = timer;
    for (const resolve of this.rearmed.splice(0)) resolve();
    return () => {
      if (this.armed === timer) this.armed = undefined;
    };
  };

  async fire(): Promise<void> {
    const timer = this.armed;
    if (!timer) throw new Error('no timer is armed');
    this.armed = undefined;
    const next = new Promise<void>((resolve) => this.rearmed.push(resolve));
    timer.onFire();
    await next;
  }
}

interface GuardHarness {
  guard: PriceGuard;
  timer: ManualTimer;
  logs: Array<Record<string, any>>;
  chain: ChainClient;
}

const harnesses: GuardHarness[] = [];
afterEach(async () => {
  for (const h of harnesses.splice(0)) {
    await h.guard.stop();
    h.chain.close();
  }
});

function guardFor(models: PriceGuardDeps['models'], rpcUrl = anvil.rpcUrl): GuardHarness {
  const logs: Array<Record<string, any>> = [];
  const logger = createLogger({
    level: 'debug',
    stream: new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString().split('\n')) if (line.trim()) logs.push(JSON.parse(line) as Record<string, any>);
        done();
      },
    }),
  });
  // Fresh reads: a check right after a re-registration must see it.
  const chain = createChainClient({ rpcUrl, chainId: anvil.chainId, servingAddress: serving.target as string, rpcTimeoutMs: 1_000, freshReads: true });
  const timer = new ManualTimer();
  const guard = createPriceGuard({
    chain,
    providerAddress: provider.address,
    models,
    checkIntervalMs: INTERVAL_MS,
    uncheckedRetryMs: UNCHECKED_RETRY_MS,
    logger,
    now: Date.now,
    startTimer: timer.startTimer,
  });
  const harness = { guard, timer, logs, chain };
  harnesses.push(harness);
  return harness;
}

function refusal(guard: PriceGuard, modelId: string): PixeldError | undefined {
  try {
    guard.assertBillable(modelId);
    return undefined;
  } catch (err) {
    if (err instanceof PixeldError) return err;
    throw err;
  }
}

// ------------------------------------------------------------------------------------ the guard

describe('price guard', () => {
  it('bills a model whose configured price equals the on-chain outputPrice', async () => {
    await advertise('acme/flux', PRICE);
    const { guard, logs } = guardFor([model('acme/flux', PRICE)]);
    await guard.start();
    expect(refusal(guard, 'acme/flux')).toBeUndefined();
    expect(guard.report().models['acme/flux']).toEqual({
      status: 'equal',
      billable: true,
      configPriceWei: PRICE.toString(),
      chainPriceWei: PRICE.toString(),
    });
    expect(logs.filter((l) => l.level === 'error' || l.level === 'warn')).toEqual([]);
  });

  it('refuses 0G billing for a model priced above the chain, and logs the model and both prices in wei', async () => {
    await advertise('acme/flux', PRICE);
    const { guard, logs } = guardFor([model('acme/flux', 2n * PRICE)]);
    await guard.start();
    const err = refusal(guard, 'acme/flux');
    expect(err?.code).toBe('model_price_mismatch');
    expect(err?.status).toBe(503);
    expect(err?.retryable).toBe(false);
    expect(err?.message).toContain(`${2n * PRICE} wei`);
    expect(err?.message).toContain(`${PRICE} wei`);
    expect(guard.report().models['acme/flux']).toMatchObject({
      status: 'config-above-chain',
      billable: false,
      configPriceWei: (2n * PRICE).toString(),
      chainPriceWei: PRICE.toString(),
    });
    const line = logs.find((l) => l.level === 'error');
    expect(line).toMatchObject({ model: 'acme/flux', configPriceWei: (2n * PRICE).toString(), chainPriceWei: PRICE.toString() });
    expect(line!.message).toContain("model 'acme/flux'");
    expect(line!.message).toContain(`config pricePerImageWei ${2n * PRICE} wei, chain outputPrice ${PRICE} wei`);
    expect(line!.message).toContain('npx pixeld register --model acme/flux');
  });

  it('bills a model priced below the chain (less than advertised), with a warning', async () => {
    await advertise('acme/flux', PRICE);
    const { guard, logs } = guardFor([model('acme/flux', PRICE / 2n)]);
    await guard.start();
    expect(refusal(guard, 'acme/flux')).toBeUndefined();
    expect(guard.report().models['acme/flux']).toMatchObject({ status: 'config-below-chain', billable: true });
    expect(logs.find((l) => l.level === 'warn')).toMatchObject({ model: 'acme/flux', chainPriceWei: PRICE.toString() });
    expect(logs.filter((l) => l.level === 'error')).toEqual([]);
  });

  it('refuses a priced model the service is not registered for, and tells the operator to register it', async () => {
    await advertise('acme/other', PRICE);
    const { guard, logs } = guardFor([model('acme/flux', PRICE), model('acme/free', 0n)]);
    await guard.start();
    const err = refusal(guard, 'acme/flux');
    expect(err?.code).toBe('model_price_mismatch');
    expect(err?.message).toContain("registered for 'acme/other'");
    expect(guard.report().models['acme/flux']).toMatchObject({ status: 'not-registered', billable: false, chainPriceWei: null });
    expect(guard.report().models['acme/flux']!.message).toContain('npx pixeld register --model acme/flux');
    expect(logs.find((l) => l.level === 'error')).toMatchObject({ model: 'acme/flux', registeredModel: 'acme/other', chainPriceWei: null });
    // A free model bills nothing, so it never bills more than advertised.
    expect(refusal(guard, 'acme/free')).toBeUndefined();
    expect(guard.report().models['acme/free']).toMatchObject({ status: 'not-registered', billable: true });
  });

  it('refuses a priced model when the provider has no service at all', async () => {
    const { guard } = guardFor([model('acme/flux', PRICE)]);
    await guard.start();
    expect(refusal(guard, 'acme/flux')?.code).toBe('model_price_mismatch');
    expect(guard.report().models['acme/flux']!.message).toContain(`provider ${provider.address} has no service on chain`);
  });

  it('picks up a re-registered price at the next scheduled check, not before', async () => {
    await advertise('acme/flux', PRICE);
    const { guard, timer, logs } = guardFor([model('acme/flux', 2n * PRICE)]);
    await guard.start();
    expect(refusal(guard, 'acme/flux')?.code).toBe('model_price_mismatch');
    expect(timer.armed?.delayMs).toBe(INTERVAL_MS);

    await advertise('acme/flux', 2n * PRICE);
    expect(refusal(guard, 'acme/flux')?.code).toBe('model_price_mismatch');
    await timer.fire();
    expect(refusal(guard, 'acme/flux')).toBeUndefined();
    expect(guard.report().models['acme/flux']).toMatchObject({ status: 'equal', chainPriceWei: (2n * PRICE).toString() });
    expect(logs.at(-1)).toMatchObject({ level: 'info', model: 'acme/flux' });
    expect(timer.armed?.delayMs).toBe(INTERVAL_MS);

    // And back: the chain lowers the price below the config's, the next check refuses again.
    await advertise('acme/flux', PRICE);
    await timer.fire();
    expect(refusal(guard, 'acme/flux')?.code).toBe('model_price_mismatch');
  });

  describe('when the chain cannot be read', () => {
    let proxy: RpcProxy;
    beforeEach(async () => {
      proxy = await startRpcProxy(anvil.rpcUrl);
    });
    afterEach(async () => {
      await proxy.close();
    });

    it('keeps the last verdict and logs a warning', async () => {
      await advertise('acme/flux', PRICE);
      const { guard, timer, logs } = guardFor([model('acme/flux', 2n * PRICE)], proxy.url);
      await guard.start();
      const checkedAt = guard.report().checkedAt;
      expect(checkedAt).not.toBeNull();

      proxy.cut();
      await advertise('acme/flux', 2n * PRICE);
      await timer.fire();
      expect(refusal(guard, 'acme/flux')?.code).toBe('model_price_mismatch');
      expect(guard.report().checkedAt).toBe(checkedAt);
      expect(logs.at(-1)).toMatchObject({ level: 'warn' });
      expect(logs.at(-1)!.message).toContain(`the verdicts of ${checkedAt} stand`);
      expect(timer.armed?.delayMs).toBe(INTERVAL_MS);

      proxy.restore();
      await timer.fire();
      expect(refusal(guard, 'acme/flux')).toBeUndefined();
    });

    it('refuses 0G billing with a retryable 503 until a first check succeeds, retrying sooner', async () => {
      await advertise('acme/flux', PRICE);
      proxy.cut();
      const { guard, timer, logs } = guardFor([model('acme/flux', PRICE)], proxy.url);
      await guard.start();
      const err = refusal(guard, 'acme/flux');
      expect(err?.code).toBe('chain_unavailable');
      expect(err?.status).toBe(503);
      expect(err?.retryable).toBe(true);
      expect(err?.retryAfterSeconds).toBe(UNCHECKED_RETRY_MS / 1000);
      expect(guard.report()).toEqual({
        checkedAt: null,
        models: {
          'acme/flux': {
            status: 'unchecked',
            billable: false,
            configPriceWei: PRICE.toString(),
            chainPriceWei: null,
            message: 'not checked yet: the chain could not be read',
          },
        },
      });
      expect(logs.at(-1)).toMatchObject({ level: 'error' });
      expect(timer.armed?.delayMs).toBe(UNCHECKED_RETRY_MS);

      proxy.restore();
      await timer.fire();
      expect(refusal(guard, 'acme/flux')).toBeUndefined();
      expect(timer.armed?.delayMs).toBe(INTERVAL_MS);
    });
  });
});

// ------------------------------------------------------------------------------------ the daemon

describe('daemon with 0G users', () => {
  const daemons: TestDaemon[] = [];
  afterEach(async () => {
    for (const d of daemons.splice(0)) await d.close();
  });

  /** Publishes `id` at `price` exactly as `pixeld register` would. */
  async function registerLikeTheCommand(id: string, price: bigint): Promise<void> {
    const params = buildServiceParams({
      model: { id, capabilities: ['generation'], pricePerImageWei: price } as ModelConfig,
      url: 'https://pixeld.example.com',
      tee: { mode: 'dev', insecure: true, address: tee.address },
      extraInfo: {},
      env: {},
    });
    await registerService(serving, provider, params);
  }

  async function daemonPricedAt(price: bigint): Promise<TestDaemon> {
    const config: Partial<ConfigInput> = {
      auth: { mode: ['0g', 'api-key'], apiKeys: [{ owner: 'router-x', sha256: createHash('sha256').update(API_KEY).digest('hex') }], chainCacheMs: 0 },
      chain: { rpcUrl: anvil.rpcUrl, chainId: anvil.chainId, servingAddress: serving.target as string },
      provider: { address: provider.address },
      backends: [{ id: 'gpu', type: 'reference' }],
      models: [{ id: 'acme/flux', backend: 'gpu', capabilities: ['generation'], sizes: ['64x64'], pricePerImageWei: price.toString() }],
    };
    const d = await startTestDaemon({ config });
    daemons.push(d);
    return d;
  }

  async function generate(d: TestDaemon, authorization: string) {
    const res = await fetch(`${d.url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization },
      body: JSON.stringify({ model: 'acme/flux', prompt: 'priced', size: '64x64' }),
    });
    return { res, body: (await res.json()) as Record<string, any> };
  }

  const asUser = async () => `Bearer ${await makeSessionToken(user, { provider: provider.address })}`;

  it('is ready and bills 0G users when the config matches what register published', async () => {
    await registerLikeTheCommand('acme/flux', PRICE);
    const d = await daemonPricedAt(PRICE);
    const ready = await fetch(`${d.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(((await ready.json()) as Record<string, any>).prices.models['acme/flux']).toMatchObject({ status: 'equal', billable: true });
    expect((await generate(d, await asUser())).res.status).toBe(200);
  });

  it('with a config price above the chain: not ready, says why, logs it; API-key callers still served; a re-registration lifts it', async () => {
    await registerLikeTheCommand('acme/flux', PRICE);
    const d = await daemonPricedAt(2n * PRICE);

    const ready = await fetch(`${d.url}/readyz`);
    expect(ready.status).toBe(503);
    const report = (await ready.json()) as Record<string, any>;
    expect(report.store).toBe('ok');
    expect(report.backends).toEqual({ gpu: 'ok' });
    expect(report.prices.models['acme/flux']).toMatchObject({
      status: 'config-above-chain',
      billable: false,
      configPriceWei: (2n * PRICE).toString(),
      chainPriceWei: PRICE.toString(),
    });
    expect(report.prices.models['acme/flux'].message).toContain('npx pixeld register --model acme/flux');
    expect(d.logs.find((l) => l.level === 'error' && String(l.message).startsWith('price check:'))).toMatchObject({
      model: 'acme/flux',
      configPriceWei: (2n * PRICE).toString(),
      chainPriceWei: PRICE.toString(),
    });

    expect((await generate(d, `Bearer ${API_KEY}`)).res.status).toBe(200);
    // A router choosing a provider for its 0G users sees it in the catalogue.
    const billable = async () => ((await (await fetch(`${d.url}/v1/models`)).json()) as Record<string, any>).data[0].billable_0g;
    expect(await billable()).toBe(false);

    await registerLikeTheCommand('acme/flux', 2n * PRICE);
    expect(await d.daemon.priceGuard!.checkNow()).toBe('checked');
    expect((await fetch(`${d.url}/readyz`)).status).toBe(200);
    expect(await billable()).toBe(true);
  });

  it("refuses a 0G user's submit for a model priced above the chain with 503 model_price_mismatch, until a re-registration", async () => {
    await registerLikeTheCommand('acme/flux', PRICE);
    const d = await daemonPricedAt(2n * PRICE);

    const refused = await generate(d, await asUser());
    expect(refused.res.status).toBe(503);
    expect(refused.res.headers.get('x-should-retry')).toBe('false');
    expect(refused.body.error).toMatchObject({ code: 'model_price_mismatch', type: 'server_error' });
    expect(refused.body.error.message).toContain(`${2n * PRICE} wei`);

    await registerLikeTheCommand('acme/flux', 2n * PRICE);
    await d.daemon.priceGuard!.checkNow();
    expect((await generate(d, await asUser())).res.status).toBe(200);
  });

  it('has no price guard without 0G auth: nobody is billed on chain', async () => {
    const d = await startTestDaemon({
      config: { auth: { mode: 'api-key', apiKeys: [{ owner: 'router-x', env: 'ROUTER_KEY' }] } },
      env: { ROUTER_KEY: API_KEY },
    });
    daemons.push(d);
    expect(d.daemon.priceGuard).toBeUndefined();
    expect(((await (await fetch(`${d.url}/readyz`)).json()) as Record<string, any>).prices).toBeUndefined();
  });
});
