import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Wallet, type TypedDataDomain } from 'ethers';
import { afterEach, describe, expect, it } from 'vitest';
import { verifyLeaf } from '../../src/billing/leaf.js';
import { SETTLEMENT_EIP712 } from '../../src/chain/serving-contract.js';
import { signJob, type ReceiptJson } from '../../src/tee/receipt.js';
import { SettlementJournal, type JournalItem } from '../../src/tee/settlement-journal.js';
import { SettlementSigner, type RecordedSignedItem, type SettlementCandidate, type SettlementPlan } from '../../src/tee/settlement-signer.js';

/**
 * The settlement signer against what the database records as signed by its key — items another replica
 * (same key, its own journal) signed, or this one before its journal was lost. Real signatures, real
 * journals in temp dirs; the "database" is the list of recorded items handed to the signer.
 */

const key = new Wallet(Wallet.createRandom().privateKey);
const tee = { signer: key, address: key.address };
const other = new Wallet(Wallet.createRandom().privateKey);
const PROVIDER = '0x1111111111111111111111111111111111111111';
const USER = '0x2222222222222222222222222222222222222222';
const FEE = 1_000n;
const domain: TypedDataDomain = { ...SETTLEMENT_EIP712.domain, chainId: 31337, verifyingContract: '0x3333333333333333333333333333333333333333' };

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A replica's journal dir (TEE-private storage, one per replica). */
function journalDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'pixeld-signer-'));
  dirs.push(dir);
  return dir;
}

const signerIn = (dir: string) =>
  new SettlementSigner({ key: tee, journal: new SettlementJournal(dir, key.address), domain, providerAddress: PROVIDER });

/** Receipts seq 1..n of USER, signed by the TEE key as a completion would sign them. */
const receipts: Array<{ jobId: string; receipt: ReceiptJson }> = Array.from({ length: 6 }, (_, i) => {
  const jobId = `job_${(i + 1).toString(16).padStart(32, '0')}`;
  const signed = signJob(
    { ...tee, teeLabel: 'INSECURE-DEV' },
    {
      provider: PROVIDER,
      job: jobId,
      model: 'm',
      user: USER,
      seq: BigInt(i + 1),
      requestSha256: 'a'.repeat(64),
      imageSha256: ['b'.repeat(64)],
      pricePerImageWei: FEE,
      feeWei: FEE,
      created: 1_767_225_600,
    },
  );
  return { jobId, receipt: signed.receipt };
});
/** Receipts numbered from..to. */
const seqs = (from: number, to: number) => receipts.slice(from - 1, to);

function candidate(over: Partial<SettlementCandidate> = {}): SettlementCandidate {
  return { user: USER, chainNonce: 0n, balanceWei: 100n * FEE, receipts: seqs(1, 3), ...over };
}

async function planOne(signer: SettlementSigner, c: SettlementCandidate): Promise<SettlementPlan> {
  const [plan] = await signer.plan([c]);
  return plan!;
}

/** The item as a settlement batch records it in the database, with the leaves of its receipts. */
function recorded(item: JournalItem, edit: Partial<RecordedSignedItem> = {}): RecordedSignedItem {
  return {
    source: 'batch stl_a (abandoned)',
    user: item.user,
    nonce: item.nonce,
    totalFeeWei: item.totalFeeWei,
    requestsHash: item.requestsHash,
    signature: item.signature,
    receipts: item.receipts.map((r) => ({ jobId: r.jobId, leaf: r.leaf })),
    ...edit,
  };
}

/** Replica A signs an item over receipts from..to (chain nonce 0, balance ample) and never sends it. */
async function signedByReplicaA(from = 1, to = 3): Promise<{ item: JournalItem; dir: string }> {
  const dir = journalDir();
  const plan = await planOne(signerIn(dir), candidate({ receipts: seqs(from, to), chainNonce: BigInt(from - 1) }));
  const { proofs: _p, resent: _r, ...item } = plan.item!;
  return { item, dir };
}

/** The item this key would sign over these receipts, signed instead by `wallet` (a key that is not the TEE's). */
async function itemSignedBy(wallet: Wallet, from: number, to: number): Promise<JournalItem> {
  const a = await signedByReplicaA(from, to);
  const signature = await wallet.signTypedData(domain, SETTLEMENT_EIP712.types, {
    requestsHash: a.item.requestsHash,
    nonce: a.item.nonce,
    provider: PROVIDER,
    user: a.item.user,
    totalFee: a.item.totalFeeWei,
  });
  return { ...a.item, signature };
}

describe('the settlement signer and the items the database records as signed by its key', () => {
  it('re-sends an item another replica signed (recorded in the database) exactly as signed, and journals it', async () => {
    const { item } = await signedByReplicaA(1, 3);
    const dirB = journalDir();

    // Replica B: A's batch was abandoned, so receipts 1..3 are unsettled again; B's journal never saw A's item.
    const plan = await planOne(signerIn(dirB), candidate({ recorded: [recorded(item)] }));

    expect(plan.itemAlerts).toEqual([]);
    expect(plan.item).toMatchObject({ resent: true, nonce: 3n, totalFeeWei: 3n * FEE, requestsHash: item.requestsHash, signature: item.signature });
    expect(plan.item!.receipts.map((r) => r.jobId)).toEqual(seqs(1, 3).map((r) => r.jobId));
    plan.item!.receipts.forEach((r, i) => expect(verifyLeaf(item.requestsHash, r.leaf, plan.item!.proofs[i]!)).toBe(true));
    expect(plan.rejected).toEqual([]);
    // B's own journal now holds it: a database rolled back to before A's batch cannot make B forget it.
    const reopened = new SettlementJournal(dirB, key.address);
    expect(reopened.floorFor(USER)).toBe(3n);
    expect(reopened.outstandingItems(USER)).toEqual([item]);
    const afterRollback = await planOne(signerIn(dirB), candidate({ recorded: [] }));
    expect(afterRollback.item).toMatchObject({ resent: true, signature: item.signature });
  });

  it('holds the user rather than sign fewer receipts under a new nonce when the balance no longer covers the recorded item', async () => {
    const { item } = await signedByReplicaA(1, 3);
    const dirB = journalDir();

    const plan = await planOne(signerIn(dirB), candidate({ balanceWei: 2n * FEE, recorded: [recorded(item)] }));

    expect(plan.item).toBeUndefined();
    expect(plan.held).toMatch(/nonce 3\) needs 3000 wei; the balance is 2000/);
    expect(new SettlementJournal(dirB, key.address).outstandingItems(USER)).toEqual([item]);
  });

  it('ignores recorded items that are not this key’s signature over their fields: another key, an edited totalFee, requestsHash or nonce, garbage', async () => {
    const { item } = await signedByReplicaA(1, 3);
    const byOtherKey = await itemSignedBy(other, 1, 5);
    const forged = [
      recorded(byOtherKey),
      recorded(item, { totalFeeWei: item.totalFeeWei + 1n }),
      recorded(item, { requestsHash: `0x${'cd'.repeat(32)}` }),
      recorded(item, { nonce: 9n }),
      recorded(item, { signature: '0x1234' }),
      recorded(item, { user: '0x4444444444444444444444444444444444444444' }),
    ];
    const dirB = journalDir();

    const plan = await planOne(signerIn(dirB), candidate({ receipts: seqs(1, 5), recorded: forged }));

    expect(plan.itemAlerts.map((a) => a.kind)).toEqual(['forged', 'forged', 'forged', 'forged', 'forged', 'forged']);
    expect(plan.itemAlerts[0]!.reason).toMatch(new RegExp(`recovers to ${other.address}`));
    // None of them counts: the floor stays at the chain's nonce, and a fresh item covers 1..5.
    expect(plan.item).toMatchObject({ resent: false, nonce: 5n, totalFeeWei: 5n * FEE });
    expect(plan.rejected).toEqual([]);
  });

  it('raises the floor for new receipts to the highest verified recorded nonce, even when the item’s receipts cannot be proven', async () => {
    const { item } = await signedByReplicaA(1, 3);
    const forgedHigher = recorded(await itemSignedBy(other, 1, 6));
    // The receipts table lost the leaves (or they were edited): the signature still binds nonce 3.
    const unprovable = recorded(item, { receipts: item.receipts.map((r) => ({ jobId: r.jobId, leaf: undefined })) });
    const dirB = journalDir();

    const plan = await planOne(signerIn(dirB), candidate({ receipts: seqs(1, 5), recorded: [unprovable, forgedHigher] }));

    expect(plan.itemAlerts.map((a) => a.kind)).toEqual(['unprovable', 'forged']);
    // Receipts 1..3 are in a signed item: never signed again. The new item starts above it — not above 6.
    expect(plan.rejected.map((r) => [r.kind, r.seq])).toEqual([
      ['below-nonce', 1n],
      ['below-nonce', 2n],
      ['below-nonce', 3n],
    ]);
    expect(plan.item).toMatchObject({ resent: false, nonce: 5n, totalFeeWei: 2n * FEE });
    expect(plan.item!.receipts.map((r) => r.jobId)).toEqual(seqs(4, 5).map((r) => r.jobId));
  });

  it('counts a recorded item whose leaves do not rebuild its requestsHash for the floor only', async () => {
    const { item } = await signedByReplicaA(1, 3);
    // A leaf edited where no other check looks (the request hash): job, user, provider, fees and top
    // sequence number agree with the signed item; only the root tells.
    const edited = [...item.receipts[1]!.leaf] as typeof item.receipts[1]['leaf'];
    edited[3] = `0x${'ee'.repeat(32)}`;
    const swapped = recorded(item, { receipts: [item.receipts[0]!, { jobId: item.receipts[1]!.jobId, leaf: edited }, item.receipts[2]!] });
    const plan = await planOne(signerIn(journalDir()), candidate({ receipts: seqs(1, 4), recorded: [swapped] }));
    expect(plan.itemAlerts).toMatchObject([{ kind: 'unprovable', reason: expect.stringMatching(/do not rebuild the signed requestsHash/) }]);
    expect(plan.item).toMatchObject({ resent: false, nonce: 4n, totalFeeWei: FEE });
  });

  it('never sends an outstanding item covering a receipt the chain’s nonce has passed (another item landed first), and signs above it', async () => {
    // A signed 1..3 and its batch never reached the database; B, unaware, signed 1..1 and it landed.
    const a = await signedByReplicaA(1, 3);
    const signerA = signerIn(a.dir);

    const plan = await planOne(signerA, candidate({ chainNonce: 1n, receipts: seqs(2, 5) }));

    expect(plan.itemAlerts).toMatchObject([{ kind: 'overlapped', nonce: 3n, source: 'journal' }]);
    expect(plan.itemAlerts[0]!.reason).toMatch(/sequence 1\b/);
    expect(plan.rejected.map((r) => [r.kind, r.seq])).toEqual([
      ['below-nonce', 2n],
      ['below-nonce', 3n],
    ]);
    expect(plan.item).toMatchObject({ resent: false, nonce: 5n, totalFeeWei: 2n * FEE });
    // Retired for good: the database offering it again changes nothing.
    const again = await planOne(signerA, candidate({ chainNonce: 1n, receipts: seqs(2, 5), recorded: [recorded(a.item)] }));
    expect(again.item).toMatchObject({ resent: true, nonce: 5n });
    expect(again.itemAlerts).toEqual([]);
  });

  it('with several outstanding items sends the lowest nonce first, one per round, each as signed', async () => {
    // Items a replica signed knowing each other: 1..2, then 3..4 — no receipt in both.
    const low = (await signedByReplicaA(1, 2)).item;
    const high = (await signedByReplicaA(3, 4)).item;
    const dir = journalDir();
    const signer = signerIn(dir);

    const first = await planOne(signer, candidate({ receipts: seqs(1, 5), recorded: [recorded(high), recorded(low)] }));
    expect(first.item).toMatchObject({ resent: true, nonce: 2n, signature: low.signature });
    // The low one landed: the high one is next, untouched; receipt 5 waits for them.
    const second = await planOne(signer, candidate({ chainNonce: 2n, receipts: seqs(3, 5), recorded: [recorded(high)] }));
    expect(second.item).toMatchObject({ resent: true, nonce: 4n, signature: high.signature });
    expect(second.itemAlerts).toEqual([]);
    const third = await planOne(signer, candidate({ chainNonce: 4n, receipts: seqs(5, 5) }));
    expect(third.item).toMatchObject({ resent: false, nonce: 5n, totalFeeWei: FEE });
  });

  it('passes over an outstanding item that a higher one overlaps: sending it first would leave the higher one unsendable', async () => {
    // A's own item 1..3 (journal); B's 1..1, signed without knowing it, recorded in the database.
    const a = await signedByReplicaA(1, 3);
    const fromB = (await signedByReplicaA(1, 1)).item;

    const plan = await planOne(signerIn(a.dir), candidate({ receipts: seqs(1, 4), recorded: [recorded(fromB)] }));

    expect(plan.item).toMatchObject({ resent: true, nonce: 3n, signature: a.item.signature });
    expect(new SettlementJournal(a.dir, key.address).outstandingItems(USER).map((i) => i.nonce)).toEqual([1n, 3n]);
  });

  it('does not journal anything for recorded items at or below the chain’s nonce', async () => {
    const { item } = await signedByReplicaA(1, 3);
    const dirB = journalDir();
    const plan = await planOne(signerIn(dirB), candidate({ chainNonce: 3n, receipts: seqs(4, 4), recorded: [recorded(item)] }));
    expect(plan.item).toMatchObject({ resent: false, nonce: 4n });
    expect(plan.itemAlerts).toEqual([]);
    expect(new SettlementJournal(dirB, key.address).outstandingItems(USER).map((i) => i.nonce)).toEqual([4n]);
  });
});
