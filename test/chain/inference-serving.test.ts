/**
 * pixeld's InferenceServing (test/chain/InferenceServing.sol) on a real anvil node, through the harness
 * the daemon's chain tests use. Every status code and number asserted here comes from
 * contracts-abi/InferenceServing.json or §4–5 of shared/spec/0g-provider-protocol.md.
 */
import { secp256k1 } from '@noble/curves/secp256k1';
import {
  Interface,
  TypedDataEncoder,
  Wallet,
  ZeroAddress,
  concat,
  getBytes,
  keccak256,
  parseEther,
  toBeHex,
  toBigInt,
  toUtf8Bytes,
  type Fragment,
  type Result,
  type TransactionReceipt,
  type TypedDataDomain,
} from 'ethers';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import daemonAbi from '../../contracts-abi/InferenceServing.json' with { type: 'json' };
import {
  INFERENCE_SERVING_FUNCTIONS,
  MIN_PROVIDER_STAKE_WEI,
  acknowledgeService,
  as,
  compileInferenceServing,
  createFundedAccount,
  deployInferenceServing,
  listensOn,
  mined,
  registerAcknowledgedService,
  registerService,
  revokeServiceAcknowledgement,
  serviceParams,
  setAccountAcknowledged,
  settlementDomain,
  signSettlement,
  startAnvil,
  type Anvil,
  type CompiledContract,
  type InferenceServingContract,
  type ServiceParamsInput,
  type SettlementItem,
} from './anvil.js';

const S = daemonAbi.settlementStatus;
const LOCK_TIME_SECONDS = 3600;
const SECP256K1_N = secp256k1.CURVE.n;

let chain: Anvil;
let artifact: CompiledContract;
let contract: InferenceServingContract;
let domain: TypedDataDomain;
let owner: Wallet;
let provider: Wallet;
let otherProvider: Wallet;
let tee: Wallet;
let users: Wallet[];

beforeAll(async () => {
  chain = await startAnvil();
  artifact = await compileInferenceServing();
  [owner, provider, otherProvider, tee] = chain.wallets as [Wallet, Wallet, Wallet, Wallet];
  users = chain.wallets.slice(4);
  const deployment = await deployInferenceServing(owner, LOCK_TIME_SECONDS);
  contract = deployment.contract;
  domain = settlementDomain(chain.chainId, deployment.address);
});

afterAll(async () => {
  await chain?.stop();
});

/** Each test, and each describe's own set-up, is undone with evm_snapshot/evm_revert. */
function isolated() {
  let suiteSnapshot = '';
  let testSnapshot = '';
  beforeAll(async () => {
    suiteSnapshot = await chain.snapshot();
  });
  afterAll(async () => {
    await chain.revert(suiteSnapshot);
  });
  beforeEach(async () => {
    testSnapshot = await chain.snapshot();
  });
  afterEach(async () => {
    await chain.revert(testSnapshot);
  });
}

async function expectRevert(pending: Promise<unknown>, errorName: string): Promise<unknown[]> {
  const error = await pending.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, `expected a revert with ${errorName}`).toBeDefined();
  // ethers decodes custom errors of calls made through a Contract; decode the rest (deployments) here.
  const { revert, data } = error as { revert?: { name: string; args: unknown[] } | null; data?: string };
  const decoded = revert ?? (data ? new Interface(artifact.abi).parseError(data) : null);
  expect(decoded?.name, String(error)).toBe(errorName);
  return [...(decoded?.args ?? [])];
}

interface AccountView {
  user: string;
  provider: string;
  nonce: bigint;
  balance: bigint;
  pendingRefund: bigint;
  refunds: Array<{ index: bigint; amount: bigint; createdAt: bigint; processed: boolean }>;
  additionalInfo: string;
  acknowledged: boolean;
  validRefundsLength: bigint;
  generation: bigint;
  revokedBitmap: bigint;
}

async function account(user: Wallet | string, ofProvider = provider.address): Promise<AccountView> {
  const address = typeof user === 'string' ? user : user.address;
  return accountView((await contract.getAccount(address, ofProvider)) as Result);
}

/** A plain copy of a decoded Account (ethers' Result.toObject(true) turns a one-element array into an object). */
function accountView(r: Result): AccountView {
  return {
    user: r.user as string,
    provider: r.provider as string,
    nonce: r.nonce as bigint,
    balance: r.balance as bigint,
    pendingRefund: r.pendingRefund as bigint,
    refunds: (r.refunds as Result[]).map((refund) => ({
      index: refund.index as bigint,
      amount: refund.amount as bigint,
      createdAt: refund.createdAt as bigint,
      processed: refund.processed as boolean,
    })),
    additionalInfo: r.additionalInfo as string,
    acknowledged: r.acknowledged as boolean,
    validRefundsLength: r.validRefundsLength as bigint,
    generation: r.generation as bigint,
    revokedBitmap: r.revokedBitmap as bigint,
  };
}

const balanceOf = (address: string) => chain.provider.getBalance(address);
const gasCost = (receipt: TransactionReceipt) => receipt.gasUsed * receipt.gasPrice;

// ------------------------------------------------------------------------------------ the ABI

describe('the daemon ABI in contracts-abi', () => {
  // solc writes `"indexed": false` for an event's plain parameters; ethers' human-readable parser omits it.
  const formatted = (fragment: Fragment) =>
    JSON.parse(fragment.format('json'), (key, value: unknown) => (key === 'indexed' && value === false ? undefined : value)) as unknown;

  it('compiles without warnings', () => {
    expect(artifact.warnings).toEqual([]);
  });

  it('is a subset of the compiled ABI: same selectors, topics, names, types and mutability', () => {
    const ours = new Interface(daemonAbi.abi);
    const compiled = new Interface(artifact.abi);
    expect(ours.fragments.length).toBe(daemonAbi.abi.length);
    for (const fragment of ours.fragments) {
      let match: Fragment | null = null;
      if (fragment.type === 'function') match = compiled.getFunction(ours.getFunction(fragment.format())!.selector);
      else if (fragment.type === 'event') match = compiled.getEvent(ours.getEvent(fragment.format())!.topicHash);
      else if (fragment.type === 'error') match = compiled.getError(ours.getError(fragment.format())!.selector);
      expect(match, fragment.format('full')).not.toBeNull();
      expect(formatted(match!), fragment.format('full')).toEqual(formatted(fragment));
    }
  });

  it('covers what the daemon calls and watches', () => {
    const ours = new Interface(daemonAbi.abi);
    const functions: string[] = [];
    ours.forEachFunction((f) => functions.push(f.name));
    expect(functions.sort()).toEqual(
      [
        'addOrUpdateService',
        'removeService',
        'getService',
        'serviceExists',
        'getAccount',
        'accountExists',
        'getBatchAccountsByUsers',
        'getAccountsByProvider',
        'lockTime',
        'settleFeesWithTEE',
        'previewSettlementResults',
      ].sort(),
    );
    expect(ours.getEvent('TEESettlementResult')!.topicHash).toBe(keccak256(toUtf8Bytes('TEESettlementResult(address,uint8,uint256)')));
    expect(S).toEqual({ SUCCESS: 0, PARTIAL: 1, PROVIDER_MISMATCH: 2, NO_TEE_SIGNER: 3, INVALID_NONCE: 4, INVALID_SIGNATURE: 5 });
  });

  it("the harness's list of contract functions is exactly the compiled ABI's", () => {
    const compiled: string[] = [];
    new Interface(artifact.abi).forEachFunction((f) => compiled.push(f.name));
    expect([...INFERENCE_SERVING_FUNCTIONS].sort()).toEqual(compiled.sort());
  });

  it("its EIP-712 domain gives the contract's domain separator", async () => {
    expect(await contract.DOMAIN_SEPARATOR()).toBe(TypedDataEncoder.hashDomain(domain));
    expect(await contract.lockTime()).toBe(BigInt(LOCK_TIME_SECONDS));
  });

  it('refuses a lock time outside 1 h .. 7 d at deployment', async () => {
    await expectRevert(deployInferenceServing(owner, 3599), 'LockTimeOutOfRange');
    await expectRevert(deployInferenceServing(owner, 7 * 24 * 3600 + 1), 'LockTimeOutOfRange');
  });
});

// ------------------------------------------------------------------------------------- services

describe('service registration', () => {
  isolated();

  it('needs a stake of 100 ether the first time, kept by the contract; updates send nothing', async () => {
    const params = serviceParams(tee.address);
    const [provided, required] = await expectRevert(
      registerService(contract, provider, params, MIN_PROVIDER_STAKE_WEI - 1n),
      'InsufficientStake',
    );
    expect([provided, required]).toEqual([MIN_PROVIDER_STAKE_WEI - 1n, MIN_PROVIDER_STAKE_WEI]);
    await expectRevert(registerService(contract, provider, params, 0n), 'InsufficientStake');
    expect(await contract.serviceExists(provider.address)).toBe(false);

    const receipt = await registerService(contract, provider, params, MIN_PROVIDER_STAKE_WEI);
    expect(await balanceOf(await contract.getAddress())).toBe(MIN_PROVIDER_STAKE_WEI);
    expect(await contract.providerStake(provider.address)).toBe(MIN_PROVIDER_STAKE_WEI);
    expect(await contract.serviceExists(provider.address)).toBe(true);

    const updated = receipt.logs.map((log) => contract.interface.parseLog(log)).find((e) => e?.name === 'ServiceUpdated');
    expect(updated?.args.service).toBe(provider.address);
    expect(updated?.args.model).toBe(params.model);

    const service = await contract.getService(provider.address);
    expect(service.provider).toBe(provider.address);
    expect(service.serviceType).toBe(params.serviceType);
    expect(service.url).toBe(params.url);
    expect(service.model).toBe(params.model);
    expect(service.verifiability).toBe('TeeML');
    expect(service.inputPrice).toBe(params.inputPrice);
    expect(service.outputPrice).toBe(params.outputPrice);
    expect(service.additionalInfo).toBe(params.additionalInfo);
    expect(service.teeSignerAddress).toBe(tee.address);
    expect(service.teeSignerAcknowledged).toBe(false);
    expect(service.updatedAt).toBe(BigInt((await chain.provider.getBlock(receipt.blockNumber))!.timestamp));

    await expectRevert(registerService(contract, provider, params, 1n), 'CannotAddStakeWhenUpdating');
    await registerService(contract, provider, { ...params, outputPrice: 5n }, 0n);
    expect((await contract.getService(provider.address)).outputPrice).toBe(5n);
    expect(await balanceOf(await contract.getAddress())).toBe(MIN_PROVIDER_STAKE_WEI);
  });

  it('refuses additionalInfo over 4096 bytes', async () => {
    const params = serviceParams(tee.address, { additionalInfo: 'x'.repeat(4097) });
    await expectRevert(registerService(contract, provider, params), 'AdditionalInfoTooLong');
    await registerService(contract, provider, { ...params, additionalInfo: 'x'.repeat(4096) });
  });

  it('getService reverts for an unknown provider; removeService deletes the service and returns the stake', async () => {
    await expectRevert(contract.getService(provider.address), 'ServiceNotExist');
    await expectRevert(as(contract, provider).removeService(), 'ServiceNotExist');
    await registerService(contract, provider, serviceParams(tee.address));
    const before = await balanceOf(provider.address);
    const receipt = await mined(as(contract, provider).removeService());
    expect(await balanceOf(provider.address)).toBe(before + MIN_PROVIDER_STAKE_WEI - gasCost(receipt));
    expect(await contract.serviceExists(provider.address)).toBe(false);
    await expectRevert(contract.getService(provider.address), 'ServiceNotExist');
    // Registering again is a first registration: stake again.
    await expectRevert(registerService(contract, provider, serviceParams(tee.address), 0n), 'InsufficientStake');
  });

  it('only the owner acknowledges or revokes a TEE signer', async () => {
    await registerService(contract, provider, serviceParams(tee.address));
    await expectRevert(acknowledgeService(contract, provider, provider.address), 'OwnableUnauthorizedAccount');
    await expectRevert(acknowledgeService(contract, owner, otherProvider.address), 'ServiceNotExist');
    await acknowledgeService(contract, owner, provider.address);
    expect((await contract.getService(provider.address)).teeSignerAcknowledged).toBe(true);
    await expectRevert(revokeServiceAcknowledgement(contract, provider, provider.address), 'OwnableUnauthorizedAccount');
    await mined(as(contract, owner).revokeTEESignerAcknowledgementByOwner(provider.address));
    expect((await contract.getService(provider.address)).teeSignerAcknowledged).toBe(false);
  });
});

describe('acknowledgement reset on update', () => {
  isolated();
  const base = () => serviceParams(tee.address);

  beforeAll(async () => {
    await registerAcknowledgedService(contract, owner, provider, tee.address);
  });

  const resetting: Array<[string, () => Partial<ServiceParamsInput>]> = [
    ['serviceType', () => ({ serviceType: 'image-editing' })],
    ['model', () => ({ model: 'test/other-model' })],
    ['verifiability', () => ({ verifiability: 'TeeML-v2' })],
    ['additionalInfo', () => ({ additionalInfo: '{"TargetSeparated":false,"ImageDigest":"sha256:00"}' })],
    ['teeSignerAddress', () => ({ teeSignerAddress: otherProvider.address })],
  ];

  it.each(resetting)('changing %s resets teeSignerAcknowledged', async (_field, change) => {
    expect((await contract.getService(provider.address)).teeSignerAcknowledged).toBe(true);
    await registerService(contract, provider, { ...base(), ...change() });
    expect((await contract.getService(provider.address)).teeSignerAcknowledged).toBe(false);
  });

  it('changing prices and url, or nothing, keeps it', async () => {
    await registerService(contract, provider, base());
    expect((await contract.getService(provider.address)).teeSignerAcknowledged).toBe(true);
    await registerService(contract, provider, { ...base(), url: 'https://pixeld.example:8443', inputPrice: 7n, outputPrice: 9n });
    const service = await contract.getService(provider.address);
    expect(service.teeSignerAcknowledged).toBe(true);
    expect([service.url, service.inputPrice, service.outputPrice]).toEqual(['https://pixeld.example:8443', 7n, 9n]);
  });
});

// ------------------------------------------------------------------------------------- accounts

describe('accounts', () => {
  isolated();
  let alice: Wallet;
  let bob: Wallet;

  beforeAll(() => {
    [alice, bob] = users as [Wallet, Wallet];
  });

  it('addAccount creates a funded, acknowledged account once; depositFund tops it up', async () => {
    expect(await contract.accountExists(alice.address, provider.address)).toBe(false);
    await expectRevert(contract.getAccount(alice.address, provider.address), 'AccountNotExists');
    await createFundedAccount(contract, alice, provider.address, parseEther('3'), '{"note":"x"}');
    expect(await contract.accountExists(alice.address, provider.address)).toBe(true);
    expect(await contract.accountExists(alice.address, otherProvider.address)).toBe(false);
    const created = await account(alice);
    expect(created.user).toBe(alice.address);
    expect(created.provider).toBe(provider.address);
    expect(created.balance).toBe(parseEther('3'));
    expect(created.acknowledged).toBe(true);
    expect(created.additionalInfo).toBe('{"note":"x"}');
    expect([created.nonce, created.pendingRefund, created.generation, created.revokedBitmap]).toEqual([0n, 0n, 0n, 0n]);

    await expectRevert(createFundedAccount(contract, alice, provider.address, 1n), 'AccountExists');
    await expectRevert(createFundedAccount(contract, provider, provider.address, 1n), 'ProviderCannotBeUser');
    await mined(as(contract, alice).depositFund(provider.address, { value: parseEther('2') }));
    expect((await account(alice)).balance).toBe(parseEther('5'));
    expect(await balanceOf(await contract.getAddress())).toBe(parseEther('5'));
    await expectRevert(as(contract, bob).depositFund(provider.address, { value: 1n }), 'AccountNotExists');
  });

  it('a user can withdraw the acknowledgement only with a zero balance; a deposit restores it', async () => {
    await createFundedAccount(contract, alice, provider.address, 1n);
    await expectRevert(setAccountAcknowledged(contract, alice, provider.address, false), 'CannotRevokeWithNonZeroBalance');
    await createFundedAccount(contract, bob, provider.address, 0n);
    await setAccountAcknowledged(contract, bob, provider.address, false);
    expect((await account(bob)).acknowledged).toBe(false);
    await mined(as(contract, bob).depositFund(provider.address, { value: 1n }));
    expect((await account(bob)).acknowledged).toBe(true);
  });

  it('refunds wait for lockTime, then pay the user', async () => {
    await createFundedAccount(contract, alice, provider.address, parseEther('10'));
    await expectRevert(as(contract, alice).requestRefund(provider.address, parseEther('10') + 1n), 'InsufficientBalance');
    await mined(as(contract, alice).requestRefund(provider.address, parseEther('3')));
    let state = await account(alice);
    expect(state.pendingRefund).toBe(parseEther('3'));
    expect(state.validRefundsLength).toBe(1n);
    expect(state.refunds[0]).toMatchObject({ index: 0n, amount: parseEther('3'), processed: false });
    // Only balance − pendingRefund can be asked for again.
    await expectRevert(as(contract, alice).requestRefund(provider.address, parseEther('7') + 1n), 'InsufficientBalance');

    await mined(as(contract, alice).processRefunds(provider.address));
    expect((await account(alice)).pendingRefund).toBe(parseEther('3'));

    await chain.increaseTime(LOCK_TIME_SECONDS);
    const before = await balanceOf(alice.address);
    const receipt = await mined(as(contract, alice).processRefunds(provider.address));
    expect(await balanceOf(alice.address)).toBe(before + parseEther('3') - gasCost(receipt));
    state = await account(alice);
    expect([state.balance, state.pendingRefund, state.validRefundsLength]).toEqual([parseEther('7'), 0n, 0n]);
    expect(state.refunds[0]?.processed).toBe(true);
  });

  it('revokeToken/revokeTokens set bits; revokeAllTokens bumps the generation and clears them', async () => {
    await createFundedAccount(contract, alice, provider.address, 1n);
    await mined(as(contract, alice).revokeToken(provider.address, 3));
    expect((await account(alice)).revokedBitmap).toBe(1n << 3n);
    await mined(as(contract, alice).revokeTokens(provider.address, [0, 200, 254]));
    expect((await account(alice)).revokedBitmap).toBe((1n << 0n) | (1n << 3n) | (1n << 200n) | (1n << 254n));
    await mined(as(contract, alice).revokeAllTokens(provider.address));
    let state = await account(alice);
    expect([state.generation, state.revokedBitmap]).toEqual([1n, 0n]);
    await mined(as(contract, alice).revokeToken(provider.address, 255));
    await mined(as(contract, alice).revokeAllTokens(provider.address));
    state = await account(alice);
    expect([state.generation, state.revokedBitmap]).toEqual([2n, 0n]);
    await expectRevert(as(contract, bob).revokeToken(provider.address, 1), 'AccountNotExists');
  });

  it("getBatchAccountsByUsers returns the caller's accounts, zeroed for a user without one", async () => {
    await createFundedAccount(contract, alice, provider.address, 11n);
    await createFundedAccount(contract, bob, provider.address, 22n);
    await createFundedAccount(contract, bob, otherProvider.address, 33n);
    const missing = Wallet.createRandom().address;
    const batch = (await as(contract, provider).getBatchAccountsByUsers([alice.address, missing, bob.address])) as AccountView[];
    expect(batch.map((a) => [a.user, a.provider, a.balance])).toEqual([
      [alice.address, provider.address, 11n],
      [ZeroAddress, ZeroAddress, 0n],
      [bob.address, provider.address, 22n],
    ]);
    const asOther = (await as(contract, otherProvider).getBatchAccountsByUsers([alice.address, bob.address])) as AccountView[];
    expect(asOther.map((a) => [a.user, a.balance])).toEqual([
      [ZeroAddress, 0n],
      [bob.address, 33n],
    ]);
  });

  it('getAccountsByProvider pages in creation order and refuses a limit over 50', async () => {
    const five = await chain.fundWallets(5, parseEther('1'));
    for (const [i, user] of five.entries()) await createFundedAccount(contract, user, provider.address, BigInt(i + 1));
    await createFundedAccount(contract, alice, otherProvider.address, 1n);

    const page = async (offset: number, limit: number) => {
      const [accounts, total] = (await contract.getAccountsByProvider(provider.address, offset, limit)) as [AccountView[], bigint];
      return { users: accounts.map((a) => a.user), total };
    };
    const addresses = five.map((w) => w.address);
    expect(await page(0, 2)).toEqual({ users: addresses.slice(0, 2), total: 5n });
    expect(await page(2, 2)).toEqual({ users: addresses.slice(2, 4), total: 5n });
    expect(await page(4, 2)).toEqual({ users: addresses.slice(4), total: 5n });
    expect(await page(5, 2)).toEqual({ users: [], total: 5n });
    expect(await page(0, 0)).toEqual({ users: addresses, total: 5n });
    expect(await page(0, 50)).toEqual({ users: addresses, total: 5n });
    const [limit, max] = await expectRevert(contract.getAccountsByProvider(provider.address, 0, 51), 'LimitTooLarge');
    expect([limit, max]).toEqual([51n, 50n]);
  });
});

// ------------------------------------------------------------------------------------ settlement

describe('settlement', () => {
  isolated();
  let alice: Wallet;
  let bob: Wallet;
  let carol: Wallet;
  let nextRequest = 0;

  beforeAll(async () => {
    [alice, bob, carol] = users as [Wallet, Wallet, Wallet];
    await registerAcknowledgedService(contract, owner, provider, tee.address);
    await createFundedAccount(contract, alice, provider.address, parseEther('10'));
    await createFundedAccount(contract, bob, provider.address, parseEther('10'));
  });

  /** A settlement item for `user` signed by the service's TEE key (or `overrides.signer`). */
  function item(
    user: Wallet | string,
    totalFee: bigint,
    nonce: bigint,
    overrides: { provider?: string; signer?: Wallet; domain?: TypedDataDomain } = {},
  ): Promise<SettlementItem> {
    return signSettlement(overrides.signer ?? tee, overrides.domain ?? domain, {
      user: typeof user === 'string' ? user : user.address,
      provider: overrides.provider ?? provider.address,
      totalFee,
      requestsHash: keccak256(toUtf8Bytes(`requests-${nextRequest++}`)),
      nonce,
    });
  }

  interface Settled {
    /** What the call returned (eth_call just before sending). */
    returned: number[];
    /** status and unsettledAmount of each TEESettlementResult event, in order. */
    events: Array<{ user: string; status: number; unsettled: bigint }>;
    receipt: TransactionReceipt;
  }

  async function settle(items: SettlementItem[], from: Wallet = provider): Promise<Settled> {
    const caller = as(contract, from);
    const returned = ((await caller.settleFeesWithTEE.staticCall(items)) as bigint[]).map(Number);
    const receipt = await mined(caller.settleFeesWithTEE(items));
    const events = receipt.logs
      .map((log) => contract.interface.parseLog(log))
      .filter((e) => e?.name === 'TEESettlementResult')
      .map((e) => ({ user: e!.args.user as string, status: Number(e!.args.status), unsettled: e!.args.unsettledAmount as bigint }));
    expect(events.map((e) => e.status)).toEqual(returned);
    expect(events.map((e) => e.user)).toEqual(items.map((i) => i.user));
    return { returned, events, receipt };
  }

  async function statusOf(one: SettlementItem, from: Wallet = provider): Promise<number> {
    return (await settle([one], from)).returned[0]!;
  }

  it('SUCCESS pays the provider exactly the fees, in one transfer, and consumes the nonces', async () => {
    const fees = [parseEther('1.5'), parseEther('0.25')];
    const items = [await item(alice, fees[0]!, 1n), await item(bob, fees[1]!, 7n)];
    const contractBefore = await balanceOf(await contract.getAddress());
    const providerBefore = await balanceOf(provider.address);
    const { returned, events, receipt } = await settle(items);

    expect(returned).toEqual([S.SUCCESS, S.SUCCESS]);
    expect(events.map((e) => e.unsettled)).toEqual([0n, 0n]);
    const total = fees[0]! + fees[1]!;
    expect(await balanceOf(provider.address)).toBe(providerBefore + total - gasCost(receipt));
    expect(await balanceOf(await contract.getAddress())).toBe(contractBefore - total);
    expect([(await account(alice)).balance, (await account(alice)).nonce]).toEqual([parseEther('8.5'), 1n]);
    expect([(await account(bob)).balance, (await account(bob)).nonce]).toEqual([parseEther('9.75'), 7n]);

    // One value transfer for the whole batch, to the caller (the provider wallet, not the TEE key).
    const trace = await chain.rpc<{ calls?: Array<{ to: string; value?: string }> }>('debug_traceTransaction', [
      receipt.hash,
      { tracer: 'callTracer' },
    ]);
    const transfers = (trace.calls ?? []).filter((call) => BigInt(call.value ?? '0x0') > 0n);
    expect(transfers.map((c) => [c.to.toLowerCase(), BigInt(c.value!)])).toEqual([[provider.address.toLowerCase(), total]]);
  });

  it('PARTIAL pays the whole balance, forgets the rest and consumes the nonce', async () => {
    const providerBefore = await balanceOf(provider.address);
    const { returned, events, receipt } = await settle([await item(alice, parseEther('12'), 3n)]);
    expect(returned).toEqual([S.PARTIAL]);
    expect(events[0]!.unsettled).toBe(parseEther('2'));
    expect(await balanceOf(provider.address)).toBe(providerBefore + parseEther('10') - gasCost(receipt));
    const state = await account(alice);
    expect([state.balance, state.nonce]).toEqual([0n, 3n]);

    // The same nonce cannot collect the remainder later.
    expect(await statusOf(await item(alice, parseEther('2'), 3n))).toBe(S.INVALID_NONCE);
    // An empty account: nothing paid, all unsettled, still PARTIAL.
    const empty = await settle([await item(alice, 5n, 4n)]);
    expect(empty.events[0]).toMatchObject({ status: S.PARTIAL, unsettled: 5n });
  });

  it('PROVIDER_MISMATCH for an item naming another provider or a caller without a service', async () => {
    await registerAcknowledgedService(contract, owner, otherProvider, tee.address);
    await createFundedAccount(contract, alice, otherProvider.address, parseEther('1'));
    // Properly signed for otherProvider, but sent by provider: it can never touch otherProvider's accounts.
    const forOther = await item(alice, 1n, 1n, { provider: otherProvider.address });
    const noAccountAnywhere = await item(carol, 1n, 1n, { provider: otherProvider.address });
    const { returned, events } = await settle([forOther, noAccountAnywhere]);
    expect(returned).toEqual([S.PROVIDER_MISMATCH, S.PROVIDER_MISMATCH]);
    expect(events.map((e) => e.unsettled)).toEqual([1n, 1n]);
    expect((await account(alice, otherProvider.address)).nonce).toBe(0n);

    // A caller whose service was removed, settling an existing account of its own.
    await mined(as(contract, otherProvider).removeService());
    expect(await statusOf(forOther, otherProvider)).toBe(S.PROVIDER_MISMATCH);
  });

  it('NO_TEE_SIGNER when the owner has not acknowledged the service (revoked, or reset by an update)', async () => {
    await revokeServiceAcknowledgement(contract, owner, provider.address);
    const { events } = await settle([await item(alice, 1n, 1n)]);
    expect(events[0]).toMatchObject({ status: S.NO_TEE_SIGNER, unsettled: 1n });
    expect((await account(alice)).nonce).toBe(0n);

    await acknowledgeService(contract, owner, provider.address);
    await registerService(contract, provider, serviceParams(tee.address, { model: 'test/new-model' }));
    expect(await statusOf(await item(alice, 1n, 1n))).toBe(S.NO_TEE_SIGNER);
    await acknowledgeService(contract, owner, provider.address);
    expect(await statusOf(await item(alice, 1n, 1n))).toBe(S.SUCCESS);
  });

  it('NO_TEE_SIGNER when the service has no signer address', async () => {
    await registerService(contract, provider, serviceParams(ZeroAddress));
    await acknowledgeService(contract, owner, provider.address);
    expect(await statusOf(await item(alice, 1n, 1n))).toBe(S.NO_TEE_SIGNER);
  });

  it('NO_TEE_SIGNER when the user has not acknowledged', async () => {
    await createFundedAccount(contract, carol, provider.address, 0n);
    expect(await statusOf(await item(carol, 1n, 1n))).toBe(S.PARTIAL); // acknowledged: passes the check
    await setAccountAcknowledged(contract, carol, provider.address, false);
    expect(await statusOf(await item(carol, 1n, 2n))).toBe(S.NO_TEE_SIGNER);
    expect((await account(carol)).nonce).toBe(1n);
  });

  it('INVALID_NONCE unless the nonce is above the account nonce', async () => {
    expect(await statusOf(await item(alice, 1n, 0n))).toBe(S.INVALID_NONCE);
    expect(await statusOf(await item(alice, 1n, 5n))).toBe(S.SUCCESS);
    expect(await statusOf(await item(alice, 1n, 5n))).toBe(S.INVALID_NONCE);
    expect(await statusOf(await item(alice, 1n, 4n))).toBe(S.INVALID_NONCE);
    expect(await statusOf(await item(alice, 1n, 6n))).toBe(S.SUCCESS);
    // Within one batch the second item sees the first one's nonce.
    const { returned } = await settle([await item(alice, 1n, 8n), await item(alice, 1n, 8n)]);
    expect(returned).toEqual([S.SUCCESS, S.INVALID_NONCE]);
  });

  describe('INVALID_SIGNATURE', () => {
    const digestOf = (one: SettlementItem, onDomain = domain) =>
      TypedDataEncoder.hash(onDomain, daemonAbi.eip712.types, {
        requestsHash: one.requestsHash,
        nonce: one.nonce,
        provider: one.provider,
        user: one.user,
        totalFee: one.totalFee,
      });

    async function expectInvalid(one: SettlementItem) {
      const before = await account(one.user);
      const { events } = await settle([one]);
      expect(events[0]).toMatchObject({ status: S.INVALID_SIGNATURE, unsettled: one.totalFee });
      const after = await account(one.user);
      expect([after.nonce, after.balance]).toEqual([before.nonce, before.balance]);
    }

    it('signed by a key other than the service TEE signer (e.g. the provider wallet)', async () => {
      await expectInvalid(await item(alice, 1n, 1n, { signer: provider }));
    });

    it('signed over another domain (chain id or contract)', async () => {
      await expectInvalid(await item(alice, 1n, 1n, { domain: { ...domain, chainId: 1 } }));
      await expectInvalid(await item(alice, 1n, 1n, { domain: { ...domain, verifyingContract: otherProvider.address } }));
    });

    it('a field changed after signing', async () => {
      const signed = await item(alice, 1n, 1n);
      await expectInvalid({ ...signed, totalFee: 2n });
      await expectInvalid({ ...signed, requestsHash: keccak256(toUtf8Bytes('other')) });
    });

    it('personal_sign over the EIP-712 digest', async () => {
      const signed = await item(alice, 1n, 1n);
      const prefixed = await tee.signMessage(getBytes(digestOf(signed)));
      await expectInvalid({ ...signed, signature: prefixed });
    });

    it('the high-s twin of a valid signature, and v as 0/1', async () => {
      const signed = await item(alice, 1n, 1n);
      const bytes = getBytes(signed.signature);
      const r = bytes.slice(0, 32);
      const s = toBigInt(bytes.slice(32, 64));
      const v = bytes[64]!;
      const twinS = SECP256K1_N - s;
      const twinV = v === 27 ? 28 : 27;
      // The twin is a mathematically valid signature by the TEE key: only the low-s rule rejects it.
      const twin = new secp256k1.Signature(toBigInt(r), twinS).addRecoveryBit(twinV - 27);
      expect(twin.hasHighS()).toBe(true);
      expect(twin.recoverPublicKey(getBytes(digestOf(signed)).slice()).toHex(false)).toBe(tee.signingKey.publicKey.slice(2));
      await expectInvalid({ ...signed, signature: concat([r, toBeHex(twinS, 32), new Uint8Array([twinV])]) });
      await expectInvalid({ ...signed, signature: concat([r, bytes.slice(32, 64), new Uint8Array([v - 27])]) });
      // The untouched signature is fine.
      expect(await statusOf(signed)).toBe(S.SUCCESS);
    });

    it('a signature that is not 65 bytes', async () => {
      const signed = await item(alice, 1n, 1n);
      await expectInvalid({ ...signed, signature: signed.signature.slice(0, -2) });
      await expectInvalid({ ...signed, signature: `${signed.signature}00` });
    });

    it('a user without an account with this provider', async () => {
      const { events } = await settle([await item(carol, 4n, 1n)]);
      expect(events[0]).toMatchObject({ status: S.INVALID_SIGNATURE, unsettled: 4n });
    });
  });

  it('previewSettlementResults agrees with settleFeesWithTEE and changes nothing', async () => {
    await createFundedAccount(contract, carol, provider.address, parseEther('1'));
    const items = [
      await item(alice, parseEther('1'), 1n), // SUCCESS
      await item(bob, parseEther('11'), 1n), // PARTIAL, 1 ether short
      await item(alice, 1n, 1n, { provider: otherProvider.address }), // PROVIDER_MISMATCH
      await item(carol, 1n, 0n), // INVALID_NONCE
      await item(carol, 1n, 1n, { signer: carol }), // INVALID_SIGNATURE
      await item(Wallet.createRandom().address, 1n, 1n), // INVALID_SIGNATURE: no account
    ];
    const accountsBefore = await Promise.all([alice, bob, carol].map((u) => account(u)));
    const [failedUsers, failureReasons, partialUsers, partialAmounts] = (await as(
      contract,
      provider,
    ).previewSettlementResults(items)) as [string[], bigint[], string[], bigint[]];
    expect(await Promise.all([alice, bob, carol].map((u) => account(u)))).toEqual(accountsBefore);

    expect(failedUsers).toEqual([items[2]!.user, items[3]!.user, items[4]!.user, items[5]!.user]);
    expect(failureReasons.map(Number)).toEqual([S.PROVIDER_MISMATCH, S.INVALID_NONCE, S.INVALID_SIGNATURE, S.INVALID_SIGNATURE]);
    expect(partialUsers).toEqual([bob.address]);
    expect(partialAmounts).toEqual([parseEther('1')]);

    const { returned, events } = await settle(items);
    expect(returned).toEqual([S.SUCCESS, S.PARTIAL, S.PROVIDER_MISMATCH, S.INVALID_NONCE, S.INVALID_SIGNATURE, S.INVALID_SIGNATURE]);
    expect(events[1]!.unsettled).toBe(partialAmounts[0]);
    // Preview judges from the caller: previewed by another address, every item fails.
    const [asOther] = (await as(contract, otherProvider).previewSettlementResults(items)) as [string[]];
    expect(asOther).toHaveLength(items.length);
  });

  it('refuses an empty batch and a batch of 51; settles 50 distinct users in one transaction', async () => {
    const many = await chain.fundWallets(51, parseEther('2'));
    expect(await balanceOf(many[50]!.address)).toBe(parseEther('2'));
    for (const user of many) await createFundedAccount(contract, user, provider.address, parseEther('1'));
    const [firstPage, total] = (await contract.getAccountsByProvider(provider.address, 0, 50)) as [AccountView[], bigint];
    expect([firstPage.length, total]).toEqual([50, 53n]); // alice and bob were first
    const [lastPage] = (await contract.getAccountsByProvider(provider.address, 50, 50)) as [AccountView[]];
    expect(lastPage.map((a) => a.user)).toEqual(many.slice(48).map((w) => w.address));

    const items = await Promise.all(many.map((user, i) => item(user, BigInt(1000 + i), 1n)));
    const caller = as(contract, provider);
    await expectRevert(caller.settleFeesWithTEE([]), 'NoSettlementsProvided');
    await expectRevert(caller.previewSettlementResults([]), 'NoSettlementsProvided');
    const [count, max] = await expectRevert(caller.settleFeesWithTEE(items), 'TooManySettlements');
    expect([count, max]).toEqual([51n, 50n]);
    await expectRevert(caller.previewSettlementResults(items), 'TooManySettlements');

    const providerBefore = await balanceOf(provider.address);
    const { returned, receipt } = await settle(items.slice(0, 50));
    expect(returned).toEqual(new Array(50).fill(S.SUCCESS));
    const expected = items.slice(0, 50).reduce((sum, i) => sum + i.totalFee, 0n);
    expect(await balanceOf(provider.address)).toBe(providerBefore + expected - gasCost(receipt));
  });

  it('fees beyond balance − pendingRefund cancel pending refunds, newest first', async () => {
    const caller = as(contract, alice);
    await mined(caller.requestRefund(provider.address, parseEther('6')));
    await mined(caller.requestRefund(provider.address, parseEther('2')));
    // balance 10, pending 8: 2 is free. A fee of 5 takes the free 2, the newer refund (2) and 1 of the older.
    expect(await statusOf(await item(alice, parseEther('5'), 1n))).toBe(S.SUCCESS);
    let state = await account(alice);
    expect([state.balance, state.pendingRefund, state.validRefundsLength]).toEqual([parseEther('5'), parseEther('5'), 1n]);
    expect(state.refunds[0]).toMatchObject({ amount: parseEther('5'), processed: false });
    expect(state.refunds[1]).toMatchObject({ amount: 0n, processed: true });

    // A fee within the free balance leaves refunds alone.
    await createFundedAccount(contract, carol, provider.address, parseEther('4'));
    await mined(as(contract, carol).requestRefund(provider.address, parseEther('1')));
    expect(await statusOf(await item(carol, parseEther('3'), 1n))).toBe(S.SUCCESS);
    expect((await account(carol)).pendingRefund).toBe(parseEther('1'));

    // A fee above the balance takes everything, refunds included.
    const { events } = await settle([await item(alice, parseEther('7'), 2n)]);
    expect(events[0]).toMatchObject({ status: S.PARTIAL, unsettled: parseEther('2') });
    state = await account(alice);
    expect([state.balance, state.pendingRefund, state.validRefundsLength]).toEqual([0n, 0n, 0n]);
    expect(state.refunds.every((r) => r.processed)).toBe(true);

    // Nothing is left to pay out once the lock expires.
    await chain.increaseTime(LOCK_TIME_SECONDS);
    const before = await balanceOf(alice.address);
    const receipt = await mined(caller.processRefunds(provider.address));
    expect(await balanceOf(alice.address)).toBe(before - gasCost(receipt));
    // A new refund reuses the spent slot.
    await mined(as(contract, alice).depositFund(provider.address, { value: parseEther('1') }));
    await mined(caller.requestRefund(provider.address, parseEther('1')));
    state = await account(alice);
    expect(state.refunds).toHaveLength(2);
    expect(state.refunds[0]).toMatchObject({ index: 0n, amount: parseEther('1'), processed: false });
  });
});

// ---------------------------------------------------------------------------------------- harness

describe('the anvil harness', () => {
  isolated();

  it('derives the well-known dev accounts from the default mnemonic', () => {
    expect(owner.address).toBe('0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266');
    expect(provider.address).toBe('0x70997970C51812dc3A010C7d01b50e0d17dc79C8');
  });

  it('with automine off a transaction stays pending until mine()', async () => {
    await chain.setAutomine(false);
    try {
      const tx = await users[0]!.sendTransaction({ to: users[1]!.address, value: 1n });
      expect(await chain.provider.getTransactionReceipt(tx.hash)).toBeNull();
      await chain.mine();
      expect((await chain.provider.getTransactionReceipt(tx.hash))?.status).toBe(1);
    } finally {
      await chain.setAutomine(true);
    }
  });

  it('setNextBlockBaseFee sets the base fee of the next block', async () => {
    await chain.setNextBlockBaseFee(7_000_000_000n);
    await chain.mine();
    expect((await chain.provider.getBlock('latest'))?.baseFeePerGas).toBe(7_000_000_000n);
  });

  it('knows its own anvil from another process on the port (parallel test files all run chain 31337)', () => {
    const port = Number(new URL(chain.rpcUrl).port);
    expect(listensOn(chain.pid, port)).toBe(true);
    expect(listensOn(chain.pid, port + 1)).toBe(false);
    expect(listensOn(process.pid, port)).toBe(false);
  });

  it('noMining leaves transactions pending; stop() leaves no process behind', async () => {
    const idle = await startAnvil({ noMining: true, accounts: 2 });
    try {
      const tx = await idle.wallets[0]!.sendTransaction({ to: idle.wallets[1]!.address, value: 1n });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(await idle.provider.getTransactionReceipt(tx.hash)).toBeNull();
      expect(await idle.provider.getBlockNumber()).toBe(0);
      await idle.mine();
      expect((await idle.provider.getTransactionReceipt(tx.hash))?.status).toBe(1);
    } finally {
      await idle.stop();
    }
    expect(() => process.kill(idle.pid, 0)).toThrow(/ESRCH/);
    await expect(fetch(idle.rpcUrl, { method: 'POST' })).rejects.toThrow();
  });
});
