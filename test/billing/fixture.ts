import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Wallet, parseEther, type TransactionReceipt } from 'ethers';
import { Settler } from '../../src/billing/settlement/settler.js';
import type { SettlerDeps } from '../../src/billing/settlement/types.js';
import { createChainClient, type ChainClient } from '../../src/chain/serving-contract.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { silentLogger } from '../../src/obs/logger.js';
import { DEV_KEY_FILE } from '../../src/tee/dev-key.js';
import type { ImageBackend } from '../../src/backends/types.js';
import {
  as,
  createFundedAccount,
  deployInferenceServing,
  mined,
  registerAcknowledgedService,
  startAnvil,
  type Anvil,
  type InferenceServingContract,
} from '../chain/anvil.js';
import { startTestDaemon, tempDir, type TestDaemon } from '../helpers/daemon.js';
import { makeSessionToken } from '../helpers/session-token.js';

/**
 * One anvil with the project's InferenceServing, a provider whose service is registered and acknowledged
 * with a fixed TEE key, and daemons that sign with that key (dev mode, key file placed in the data dir):
 * receipts come from real jobs through the HTTP API, settlements from the real settler.
 */

/** Price of one image: 0.001 0G. */
export const PRICE = parseEther('0.001');
/** A cron expression that does not fire during a test run (1 January, 00:00). */
export const NEVER = '0 0 1 1 *';

export interface BillingChain {
  anvil: Anvil;
  serving: InferenceServingContract;
  owner: Wallet;
  provider: Wallet;
  teeKey: Wallet;
}

export async function setupBillingChain(): Promise<BillingChain> {
  const anvil = await startAnvil();
  const [owner, provider] = anvil.wallets as [Wallet, Wallet];
  const serving = (await deployInferenceServing(owner)).contract;
  const teeKey = Wallet.createRandom();
  await registerAcknowledgedService(serving, owner, provider, teeKey.address, { model: 'ref', outputPrice: PRICE });
  return { anvil, serving, owner, provider, teeKey: new Wallet(teeKey.privateKey) };
}

export function daemonConfig(c: BillingChain, extra: Partial<ConfigInput> = {}, rpcUrl = c.anvil.rpcUrl): Partial<ConfigInput> {
  return {
    auth: { mode: '0g', chainCacheMs: 0 },
    chain: { rpcUrl, chainId: c.anvil.chainId, servingAddress: c.serving.target as string, rpcTimeoutMs: 2_000 },
    provider: { address: c.provider.address },
    backends: [{ id: 'reference', type: 'reference', concurrency: 4, latencyMsPerImage: 0 }],
    models: [{ id: 'ref', backend: 'reference', capabilities: ['generation'], sizes: ['64x64'], pricePerImageWei: PRICE.toString(), maxN: 4 }],
    ...extra,
    billing: { settlementCron: NEVER, thresholdCheckIntervalMs: 3_600_000, ...(extra.billing ?? {}) },
  };
}

export interface BillingDaemonOptions {
  config?: Partial<ConfigInput>;
  /** Give the daemon the provider wallet (its settler runs). @default true */
  wallet?: boolean;
  backends?: ReadonlyMap<string, ImageBackend>;
  dataDir?: string;
}

/** A daemon signing with the service's TEE key. */
export async function startBillingDaemon(c: BillingChain, options: BillingDaemonOptions = {}): Promise<TestDaemon> {
  const dataDir = options.dataDir ?? tempDir('pixeld-billing-');
  writeFileSync(path.join(dataDir, DEV_KEY_FILE), `${c.teeKey.privateKey}\n`, { mode: 0o600 });
  return startTestDaemon({
    config: daemonConfig(c, options.config),
    dataDir,
    backends: options.backends,
    env: options.wallet === false ? {} : { PIXELD_PROVIDER_KEY: c.provider.privateKey },
  });
}

/** Fresh users, each with an account with the provider holding `amountWei`. */
export async function fundedUsers(c: BillingChain, count: number, amountWei = parseEther('1')): Promise<Wallet[]> {
  const users = await c.anvil.fundWallets(count, parseEther('10'));
  await Promise.all(users.map((u) => createFundedAccount(c.serving, u, c.provider.address, amountWei)));
  return users;
}

export async function bearer(c: BillingChain, user: Wallet): Promise<string> {
  return `Bearer ${await makeSessionToken(user, { provider: c.provider.address })}`;
}

export interface Generated {
  status: number;
  jobId: string;
  body: Record<string, any>;
}

/** A synchronous generation of `n` 64×64 images through the daemon's API, as `user`. */
export async function generate(d: TestDaemon, c: BillingChain, user: Wallet, n = 1): Promise<Generated> {
  const res = await fetch(`${d.url}/v1/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: await bearer(c, user) },
    body: JSON.stringify({ model: 'ref', prompt: `for ${user.address}`, size: '64x64', n }),
  });
  return { status: res.status, jobId: res.headers.get('x-job-id') ?? '', body: (await res.json()) as Record<string, any> };
}

/** Like generate, but fails the test unless the job completed. */
export async function completedJob(d: TestDaemon, c: BillingChain, user: Wallet, n = 1): Promise<string> {
  const g = await generate(d, c, user, n);
  if (g.status !== 200) throw new Error(`generation failed with ${g.status}: ${JSON.stringify(g.body)}`);
  return g.jobId;
}

export async function receiptOf(d: TestDaemon, c: BillingChain, user: Wallet, jobId: string): Promise<Record<string, any>> {
  const res = await fetch(`${d.url}/v1/receipts/${jobId}`, { headers: { authorization: await bearer(c, user) } });
  if (res.status !== 200) throw new Error(`GET /v1/receipts/${jobId}: ${res.status}`);
  return (await res.json()) as Record<string, any>;
}

export interface StandaloneSettler {
  settler: Settler;
  chain: ChainClient;
  /** Stops a round still running (it must not outlive the daemon's database), then the client. */
  close(): Promise<void>;
}

/** A second Settler on the daemon's store, talking to `rpcUrl` (e.g. an RPC proxy), with fast polling. */
export function standaloneSettler(d: TestDaemon, c: BillingChain, rpcUrl: string, overrides: Partial<SettlerDeps> = {}): StandaloneSettler {
  const chain = createChainClient({ rpcUrl, chainId: c.anvil.chainId, servingAddress: c.serving.target as string, rpcTimeoutMs: 2_000, freshReads: true });
  const settler = new Settler({
    billing: d.daemon.billing,
    chain,
    wallet: new Wallet(c.provider.privateKey),
    providerAddress: c.provider.address,
    tee: d.daemon.tee,
    billingConfig: d.config.billing,
    logger: silentLogger(),
    pollIntervalMs: 50,
    ...overrides,
  });
  return {
    settler,
    chain,
    async close() {
      await settler.stop();
      chain.close();
    },
  };
}

/** The on-chain account of `user` with the provider. */
export async function accountOf(c: BillingChain, user: string): Promise<{ nonce: bigint; balance: bigint; pendingRefund: bigint }> {
  const a = (await c.serving.getAccount(user, c.provider.address)) as { nonce: bigint; balance: bigint; pendingRefund: bigint };
  return { nonce: a.nonce, balance: a.balance, pendingRefund: a.pendingRefund };
}

/** The settlement items a mined transaction carried, by lower-case user. */
export async function itemsSent(c: BillingChain, txHash: string): Promise<Map<string, { nonce: bigint; requestsHash: string; totalFee: bigint }>> {
  const tx = await c.anvil.provider.getTransaction(txHash);
  const parsed = c.serving.interface.parseTransaction({ data: tx!.data })!;
  const items = new Map<string, { nonce: bigint; requestsHash: string; totalFee: bigint }>();
  for (const s of parsed.args[0] as Array<{ user: string; nonce: bigint; requestsHash: string; totalFee: bigint }>) {
    items.set(s.user.toLowerCase(), { nonce: s.nonce, requestsHash: s.requestsHash, totalFee: s.totalFee });
  }
  return items;
}

/** Every TEESettlementResult event for `user` so far. */
export async function settlementEventsFor(c: BillingChain, user: string): Promise<Array<{ status: number; unsettled: bigint; tx: string }>> {
  const logs = await c.serving.queryFilter(c.serving.filters.TEESettlementResult!(user), 0, 'latest');
  return logs.map((l) => {
    const parsed = c.serving.interface.parseLog(l)!;
    return { status: Number(parsed.args[1]), unsettled: BigInt(parsed.args[2] as bigint), tx: l.transactionHash };
  });
}

/** Gas paid by the sender of a mined transaction. */
export const gasPaid = (r: TransactionReceipt) => r.gasUsed * r.gasPrice;

export { as, mined };
