import { randomBytes } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Wallet, ZeroHash } from 'ethers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyCharge, type ChargeCheck, type ReceiptInput } from '../../src/billing/verify-charge.js';
import { runVerifyChargeCli, verifyChargeCommand } from '../../src/commands/verify-charge.js';
import { buildUserTree, receiptLeaf } from '../../src/billing/leaf.js';
import { signJob, type ReceiptJson } from '../../src/tee/receipt.js';
import { as, mined, registerAcknowledgedService, settlementDomain, signSettlement } from '../chain/anvil.js';
import { tempDir, type TestDaemon } from '../helpers/daemon.js';
import { PRICE, bearer, completedJob, fundedUsers, setupBillingChain, startBillingDaemon, type BillingChain } from './fixture.js';

/**
 * verify-charge end to end: real jobs through the daemon, a real settlement round on anvil running the
 * project's InferenceServing, the receipts as GET /v1/receipts serves them — then the charge checked,
 * and each way it can be wrong caught by the check that names it.
 */

let c: BillingChain;
let d: TestDaemon;
let alice: Wallet;
let bob: Wallet;
let txHash: string;
let aliceReceipts: Array<Record<string, any>>;
let bobReceipts: Array<Record<string, any>>;

async function listed(user: Wallet): Promise<Array<Record<string, any>>> {
  const res = await fetch(`${d.url}/v1/receipts`, { headers: { authorization: await bearer(c, user) } });
  expect(res.status).toBe(200);
  return ((await res.json()) as { data: Array<Record<string, any>> }).data;
}

beforeAll(async () => {
  c = await setupBillingChain();
  d = await startBillingDaemon(c);
  [alice, bob] = (await fundedUsers(c, 2)) as [Wallet, Wallet];
  await completedJob(d, c, alice, 2);
  await completedJob(d, c, alice, 1);
  await completedJob(d, c, alice, 3);
  await completedJob(d, c, bob, 1);
  const round = await d.daemon.settler!.runRound();
  expect(round.users.map((u) => u.outcome)).toEqual(['settled', 'settled']);
  txHash = round.transactions[0]!;
  aliceReceipts = await listed(alice);
  bobReceipts = await listed(bob);
}, 120_000);

afterAll(async () => {
  await d?.close();
  if (d) rmSync(d.dataDir, { recursive: true, force: true });
  await c?.anvil.stop();
});

const check = (user: Wallet, receipts: readonly ReceiptInput[], hash = txHash) =>
  verifyCharge({ provider: c.anvil.provider }, { txHash: hash, user: user.address, receipts });
const byName = (checks: ChargeCheck[]) => Object.fromEntries(checks.map((x) => [x.name, x]));
const bare = (entries: Array<Record<string, any>>): ReceiptJson[] => entries.map((e) => structuredClone(e.receipt) as ReceiptJson);

describe('verifyCharge', () => {
  it('passes every check for a settled charge, from the entries GET /v1/receipts serves and from the bare receipts', async () => {
    expect(aliceReceipts.map((r) => r.settlement.tx_hash)).toEqual([txHash, txHash, txHash]);
    const result = await check(alice, aliceReceipts as ReceiptInput[]);
    expect(result.checks.filter((x) => !x.ok)).toEqual([]);
    expect(result.ok).toBe(true);
    expect(result.checks.map((x) => x.name)).toEqual(['transaction', 'item', 'tee signer', 'item signature', 'receipts', 'requestsHash', 'nonce', 'totalFee']);
    const fees = aliceReceipts.reduce((sum, r) => sum + BigInt(r.receipt.fee_wei), 0n);
    expect(result.item).toMatchObject({ nonce: 3n, totalFeeWei: fees, provider: c.provider.address });
    expect(byName(result.checks).item!.detail).toContain('SUCCESS');
    expect(byName(result.checks)['tee signer']!.detail).toContain(c.teeKey.address);
    expect((await check(alice, bare(aliceReceipts))).ok).toBe(true);
    // Bob's item in the same transaction, from his own receipts.
    expect((await check(bob, bobReceipts as ReceiptInput[])).ok).toBe(true);
  });

  it('fails when a receipt is missing: the root and the total no longer match the item', async () => {
    const result = await check(alice, bare(aliceReceipts).slice(1));
    const checks = byName(result.checks);
    expect(result.ok).toBe(false);
    expect(checks.receipts!.ok).toBe(true);
    expect(checks.requestsHash).toMatchObject({ ok: false });
    expect(checks.requestsHash!.detail).toMatch(/the 2 valid receipts' leaves rebuild 0x[0-9a-f]{64}, not the item's 0x[0-9a-f]{64}/);
    expect(checks.totalFee).toMatchObject({ ok: false });
    expect(checks.totalFee!.detail).toContain(`the item charges ${result.item!.totalFeeWei} wei`);
  });

  it('fails when a receipt’s fee was changed: its signature no longer holds', async () => {
    const receipts = bare(aliceReceipts);
    const r = receipts[0]!;
    const fee = BigInt(r.fee_wei);
    r.text = r.text.replace(`fee_wei:${fee}`, `fee_wei:${fee + 1n}`);
    r.fee_wei = (fee + 1n).toString();
    const result = await check(alice, receipts);
    const checks = byName(result.checks);
    expect(result.ok).toBe(false);
    expect(checks.receipts!.ok).toBe(false);
    expect(checks.receipts!.detail).toContain(`1 of 3 receipts fail: ${r.job}: signed by 0x`);
    expect(checks.receipts!.detail).toContain(`not by the TEE signer ${c.teeKey.address}`);
    expect(checks.requestsHash!.ok).toBe(false);
  });

  it('fails when a receipt of another user is slipped in', async () => {
    const intruder = bare(bobReceipts)[0]!;
    const result = await check(alice, [...bare(aliceReceipts), intruder]);
    const checks = byName(result.checks);
    expect(result.ok).toBe(false);
    expect(checks.receipts!.detail).toContain(`${intruder.job}: the signed receipt names user ${bob.address}`);
    // Entries carry the daemon's requests_hash: one claimed for Alice's item is checked, and caught.
    const claimed = { ...structuredClone(bobReceipts[0]!), settlement: { ...bobReceipts[0]!.settlement, requests_hash: aliceReceipts[0]!.settlement.requests_hash } };
    const viaEntries = await check(alice, [...aliceReceipts, claimed] as ReceiptInput[]);
    expect(byName(viaEntries.checks).receipts!.detail).toContain(`names user ${bob.address}`);
    expect(viaEntries.ok).toBe(false);
  });

  it('fails when a receipt is signed by another key than the service’s TEE signer', async () => {
    const other = Wallet.createRandom();
    const receipts = bare(aliceReceipts);
    receipts[1]!.signature = other.signMessageSync(receipts[1]!.text);
    const result = await check(alice, receipts);
    expect(result.ok).toBe(false);
    expect(byName(result.checks).receipts!.detail).toContain(`${receipts[1]!.job}: signed by ${other.address}, not by the TEE signer ${c.teeKey.address}`);
  });

  it('fails when the item on chain was signed by another key: the chain refused it, nothing was charged', async () => {
    const other = new Wallet(Wallet.createRandom().privateKey);
    const carol = (await fundedUsers(c, 1))[0]!;
    const { chainId } = await c.anvil.provider.getNetwork();
    const item = await signSettlement(other, settlementDomain(chainId, c.serving.target as string), {
      user: carol.address,
      provider: c.provider.address,
      totalFee: 5n,
      requestsHash: ZeroHash,
      nonce: 1n,
    });
    const sent = await mined(as(c.serving, c.provider).settleFeesWithTEE([item]));
    const result = await check(carol, [], sent.hash);
    const checks = byName(result.checks);
    expect(result.ok).toBe(false);
    expect(checks.item!.detail).toContain('INVALID_SIGNATURE: not charged');
    expect(checks['item signature']).toMatchObject({ ok: false, detail: `the EIP-712 signature recovers to ${other.address}, not the TEE signer ${c.teeKey.address}` });
  });

  it('reports a PARTIAL charge with what was taken, and passes when the receipts match the item', async () => {
    const [dave] = (await fundedUsers(c, 1, 3n * PRICE)) as [Wallet];
    const key = { signer: c.teeKey, address: c.teeKey.address, teeLabel: 'tdx' as const };
    const receipts = [1n, 2n].map(
      (seq) =>
        signJob(key, {
          provider: c.provider.address,
          job: `job_${randomBytes(16).toString('hex')}`,
          model: 'ref',
          user: dave.address,
          seq,
          requestSha256: 'ab'.repeat(32),
          imageSha256: ['cd'.repeat(32), 'ef'.repeat(32)],
          pricePerImageWei: PRICE,
          feeWei: 2n * PRICE,
          created: 1_795_300_000,
        }).receipt,
    );
    const { root } = buildUserTree(receipts.map(receiptLeaf));
    const { chainId } = await c.anvil.provider.getNetwork();
    const item = await signSettlement(c.teeKey, settlementDomain(chainId, c.serving.target as string), {
      user: dave.address,
      provider: c.provider.address,
      totalFee: 4n * PRICE,
      requestsHash: root,
      nonce: 2n,
    });
    const sent = await mined(as(c.serving, c.provider).settleFeesWithTEE([item]));
    const result = await check(dave, receipts, sent.hash);
    expect(result.checks.filter((x) => !x.ok)).toEqual([]);
    expect(byName(result.checks).item!.detail).toContain(`PARTIAL: charged ${3n * PRICE} wei, ${PRICE} wei not owed`);
  });

  it('fails for a user with no item, and for a transaction that is not a settlement', async () => {
    const none = await check(new Wallet(Wallet.createRandom().privateKey), aliceReceipts as ReceiptInput[]);
    expect(none.checks).toEqual([
      expect.objectContaining({ name: 'transaction', ok: true }),
      { name: 'item', ok: false, detail: expect.stringContaining('the transaction has no item for') },
    ]);
    const transfer = await (await c.owner.sendTransaction({ to: alice.address, value: 1n })).wait();
    const notSettlement = await check(alice, aliceReceipts as ReceiptInput[], transfer!.hash);
    expect(notSettlement.checks).toEqual([{ name: 'transaction', ok: false, detail: `${transfer!.hash} does not call settleFeesWithTEE` }]);
  });
});

describe('pixeld verify-charge', () => {
  const run = async (options: Partial<Parameters<typeof verifyChargeCommand>[0]>, env: NodeJS.ProcessEnv = {}) => {
    const out: string[] = [];
    const err: string[] = [];
    const code = await verifyChargeCommand(
      { rpc: c.anvil.rpcUrl, tx: txHash, user: alice.address, ...options },
      { stdout: (l) => out.push(l), stderr: (l) => err.push(l), env },
    );
    return { code, out, err };
  };

  it('fetches every page of the caller’s receipts from the daemon and prints one line per check; exit 0', async () => {
    const pages: string[] = [];
    const out: string[] = [];
    const code = await verifyChargeCommand(
      { rpc: c.anvil.rpcUrl, tx: txHash, user: alice.address, url: d.url },
      { stdout: (l) => out.push(l), stderr: (l) => out.push(l), env: { PIXELD_AUTHORIZATION: await bearer(c, alice) } },
      {
        pageSize: 2,
        fetch: (url, init) => {
          if (String(url).startsWith(d.url)) pages.push(String(url));
          return fetch(url, init);
        },
      },
    );
    expect(out).toHaveLength(9);
    expect(out.slice(0, 8).every((l) => l.startsWith('✓ '))).toBe(true);
    expect(out[8]).toBe('charge verified: every check passed');
    expect(code).toBe(0);
    expect(pages).toHaveLength(2);
    expect(pages[1]).toContain('after=2');
  });

  it('reads a receipts file; a missing receipt fails with exit 1, and --json says the same', async () => {
    const file = path.join(tempDir(), 'receipts.json');
    writeFileSync(file, JSON.stringify({ object: 'list', data: aliceReceipts.slice(0, 2) }));
    const text = await run({ receiptsFile: file });
    expect(text.code).toBe(1);
    expect(text.out.filter((l) => l.startsWith('✗ ')).map((l) => l.split(':')[0])).toEqual(['✗ requestsHash', '✗ nonce', '✗ totalFee']);
    expect(text.out.at(-1)).toBe('charge NOT verified');
    const json = await run({ receiptsFile: file, json: true });
    expect(json.code).toBe(1);
    const parsed = JSON.parse(json.out[0]!) as { ok: boolean; checks: ChargeCheck[]; item: { nonce: string } };
    expect(parsed.ok).toBe(false);
    expect(parsed.item.nonce).toBe('3');
    expect(parsed.checks.filter((x) => !x.ok).map((x) => x.name)).toEqual(['requestsHash', 'nonce', 'totalFee']);
  });

  it('parses its command line: a receipts file of bare receipts passes; --rpc, --tx and --user are required', async () => {
    const file = path.join(tempDir(), 'bare.json');
    writeFileSync(file, JSON.stringify(bare(aliceReceipts)));
    const out: string[] = [];
    const io = { stdout: (l: string) => out.push(l), stderr: (l: string) => out.push(l), isTTY: false, env: {} };
    expect(await runVerifyChargeCli(['--rpc', c.anvil.rpcUrl, '--tx', txHash, '--user', alice.address.toLowerCase(), '--receipts', file], io)).toBe(0);
    expect(out.at(-1)).toBe('charge verified: every check passed');
    out.length = 0;
    expect(await runVerifyChargeCli(['--tx', txHash, '--user', alice.address, '--receipts', file], io)).toBe(2);
    expect(out[0]).toContain('--rpc, --tx and --user are required');
  });

  it('refuses bad arguments and a daemon it cannot read from with exit 2', async () => {
    expect((await run({ url: d.url })).err[0]).toContain('PIXELD_AUTHORIZATION');
    const other = await run({ url: d.url, user: bob.address }, { PIXELD_AUTHORIZATION: await bearer(c, alice) });
    expect(other.code).toBe(2);
    expect(other.err[0]).toContain('403');
    expect((await run({})).code).toBe(2);
    expect((await run({ tx: '0x12', receiptsFile: 'x' })).err[0]).toContain('--tx must be a transaction hash');
    const file = path.join(tempDir(), 'receipts.json');
    writeFileSync(file, JSON.stringify(aliceReceipts));
    const down = await run({ receiptsFile: file, rpc: 'http://127.0.0.1:9' });
    expect(down.code).toBe(1);
    expect(down.err[0]).toContain('the chain could not be read at http://127.0.0.1:9');
  });
});

describe('the TEE signer is the one the contract held at the transaction’s block', () => {
  it('still verifies after the service moved to another acknowledged signer, and refuses receipts by the new one', async () => {
    const next = new Wallet(Wallet.createRandom().privateKey);
    await registerAcknowledgedService(c.serving, c.owner, c.provider, next.address, { model: 'ref', outputPrice: PRICE });
    expect((await c.serving.getService(c.provider.address)).teeSignerAddress).toBe(next.address);
    const result = await verifyCharge({ provider: c.anvil.provider }, { txHash, user: alice.address, receipts: aliceReceipts as ReceiptInput[] });
    expect(result.ok).toBe(true);
    expect(byName(result.checks)['tee signer']!.detail).toContain(c.teeKey.address);
    const receipts = bare(aliceReceipts);
    receipts[0]!.signature = next.signMessageSync(receipts[0]!.text);
    const byNext = await verifyCharge({ provider: c.anvil.provider }, { txHash, user: alice.address, receipts });
    expect(byNext.ok).toBe(false);
    expect(byName(byNext.checks).receipts!.detail).toContain(`signed by ${next.address}, not by the TEE signer ${c.teeKey.address}`);
  });
});
