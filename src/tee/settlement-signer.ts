import { getAddress, verifyTypedData, type TypedDataDomain } from 'ethers';
import { SETTLEMENT_EIP712 } from '../chain/serving-contract.js';
import { buildUserTree, jobIdAsBytes32, leafOf, type LeafValues } from '../billing/leaf.js';
import type { TeeKeyProvider } from './key-provider.js';
import { parseReceiptText, recoverTextSigner, type ReceiptFields, type ReceiptJson } from './receipt.js';
import type { JournalItem, SettlementJournal } from './settlement-journal.js';

/**
 * The only code that signs a TEESettlement. It trusts neither the database (the operator in `tdx` mode
 * can edit it, and is the party being paid) nor the RPC node's answers beyond what the contract itself
 * enforces:
 * - every leaf and fee is rebuilt from the receipt's signed text, and that signature must be this key's;
 * - only receipts numbered above the on-chain nonce, the journal's highest signed nonce and the nonce of
 *   every item the database records as signed by this key are covered, and the item's nonce is the
 *   highest number it covers — so the contract's `nonce > Account.nonce` rule refuses any receipt already
 *   paid, and no receipt is in two signed items;
 * - whole receipts only, in sequence order, as far as the balance covers: nothing is sent to come back
 *   PARTIAL and forfeit the rest;
 * - while an item is outstanding it is sent again as signed, never re-signed under another nonce.
 *
 * Replicas share the key (dstack) but each has its own journal. What another settler signed reaches this
 * one through the database's batches: an item there counts only if its EIP-712 signature is this key's
 * over exactly its fields, in this domain, for this provider (anything else is reported and ignored);
 * then its nonce raises the floor, and, if its leaves rebuild its requestsHash, it is adopted into the
 * journal as an outstanding item like one signed here. A database that hides an item cannot be caught
 * this way (README, Trust).
 *
 * Which outstanding item is sent, when there are several (adopted beside the journal's own): the lowest
 * nonce first, since items signed with every earlier one known never overlap, and each lands in turn
 * (sending a higher one first would void the lower ones' receipts). Items that overlap exist only when one
 * was signed without knowledge of the other (a replica signed and died before its batch was recorded, or
 * a pixeld that did not yet read the database's items signed it): an item overlapped by a higher outstanding one is passed over — the higher one,
 * taken further along the same sequence, covers it, and sending the lower first would leave it unsendable
 * — and an item covering a receipt the chain's nonce has already passed is never sent (retired): the
 * item that moved the nonce may have paid that receipt.
 */

export interface SettlementCandidate {
  user: string;
  /** Account.nonce and balance as read for this round. */
  chainNonce: bigint;
  balanceWei: bigint;
  /** The user's receipts the database calls unsettled, as stored (untrusted). */
  receipts: Array<{ jobId: string; receipt: ReceiptJson }>;
  /**
   * Items the database records as signed for the user with a nonce above chainNonce, by any settler
   * (untrusted: each is verified against this key before it counts).
   */
  recorded?: RecordedSignedItem[];
}

/** An item the database records as signed for the user (by any settler), with the leaves it holds for its receipts (untrusted). */
export interface RecordedSignedItem {
  /** Where the database keeps it (a batch id), for the alerts. */
  source: string;
  user: string;
  nonce: bigint;
  totalFeeWei: bigint;
  requestsHash: string;
  signature: string;
  receipts: Array<{ jobId: string; leaf: LeafValues | undefined }>;
}

export type ItemAlertKind =
  /** Recorded in the database, but not this key's signature over these fields: ignored. */
  | 'forged'
  /** Signed by this key, but its recorded receipts do not rebuild its requestsHash: its nonce counts, it is never sent. */
  | 'unprovable'
  /** Outstanding, but covers a receipt the chain's nonce has passed (another item landed first): never sent. */
  | 'overlapped';

export interface ItemAlert {
  kind: ItemAlertKind;
  nonce: bigint;
  /** The batch that records it, or `journal`. */
  source: string;
  reason: string;
}

export type RejectionKind =
  /** The text or signature does not hold up, or it names another user, provider or job: kept for a person. */
  | 'invalid'
  /** A v1 receipt: no sequence number, so it cannot be settled without risking a double charge. */
  | 'unsequenced'
  /** Numbered at or below what was already settled or signed: chargeable never again. */
  | 'below-nonce';

export interface ReceiptRejection {
  jobId: string;
  kind: RejectionKind;
  reason: string;
  /** The sequence number from the signed text, when it could be read. */
  seq: bigint | undefined;
}

export interface SignedItem extends JournalItem {
  /** Each covered receipt's proof against requestsHash, in `receipts` order. */
  proofs: string[][];
  /** true: an outstanding item (the journal's, or one the database records), sent again exactly as signed before. */
  resent: boolean;
}

export interface SettlementPlan {
  user: string;
  item: SignedItem | undefined;
  /** Why nothing is sent for the user, when item is undefined. */
  held: string | undefined;
  rejected: ReceiptRejection[];
  /** Signed items (recorded or journaled) that are ignored or never sent, and why: each is an alert. */
  itemAlerts: ItemAlert[];
}

export interface SettlementSignerDeps {
  key: Pick<TeeKeyProvider, 'signer' | 'address'>;
  journal: SettlementJournal;
  domain: TypedDataDomain;
  providerAddress: string;
}

export interface VerifiedReceipt {
  jobId: string;
  fields: ReceiptFields & { seq: bigint };
  leaf: LeafValues;
}

export class SettlementSigner {
  constructor(private readonly deps: SettlementSignerDeps) {}

  get journal(): SettlementJournal {
    return this.deps.journal;
  }

  /**
   * Decides and signs one item per user; every new signature, and every recorded item taken in, is in
   * the journal before this returns.
   */
  async plan(candidates: readonly SettlementCandidate[]): Promise<SettlementPlan[]> {
    const { journal } = this.deps;
    const plans: SettlementPlan[] = [];
    const signed: JournalItem[] = [];
    for (const candidate of candidates) {
      journal.observeChainNonce(candidate.user, candidate.chainNonce);
      const itemAlerts = this.adoptRecorded(candidate);
      const outstanding = this.sendableOutstanding(candidate, itemAlerts);
      const verified: VerifiedReceipt[] = [];
      const rejected: ReceiptRejection[] = [];
      const expect = { signer: this.deps.key.address, user: candidate.user, provider: this.deps.providerAddress };
      for (const { jobId, receipt } of candidate.receipts) {
        const checked = verifyReceipt(jobId, receipt, expect);
        if (isVerified(checked)) verified.push(checked);
        else rejected.push(checked);
      }
      const journalFloor = journal.floorFor(candidate.user);
      const floor = candidate.chainNonce > journalFloor ? candidate.chainNonce : journalFloor;
      const inOutstanding = new Set(outstanding.all.flatMap((o) => o.receipts.map((r) => r.jobId)));
      const fresh: VerifiedReceipt[] = [];
      const seqs = new Set<bigint>();
      for (const v of verified.sort((a, b) => (a.fields.seq < b.fields.seq ? -1 : a.fields.seq > b.fields.seq ? 1 : 0))) {
        if (inOutstanding.has(v.jobId)) continue;
        if (v.fields.seq <= floor) {
          rejected.push({ jobId: v.jobId, kind: 'below-nonce', seq: v.fields.seq, reason: `sequence ${v.fields.seq} is not above ${floor}, already settled or signed` });
        } else if (seqs.has(v.fields.seq)) {
          rejected.push({ jobId: v.jobId, kind: 'invalid', seq: v.fields.seq, reason: `a second receipt with sequence ${v.fields.seq}` });
        } else {
          seqs.add(v.fields.seq);
          fresh.push(v);
        }
      }
      const plan: SettlementPlan = { user: candidate.user, item: undefined, held: undefined, rejected, itemAlerts };
      plans.push(plan);
      const next = outstanding.next;
      if (next) {
        if (next.totalFeeWei > candidate.balanceWei) {
          plan.held = `the item signed earlier (nonce ${next.nonce}) needs ${next.totalFeeWei} wei; the balance is ${candidate.balanceWei}`;
        } else {
          plan.item = { ...next, proofs: buildUserTree(next.receipts.map((r) => r.leaf)).proofs, resent: true };
        }
        continue;
      }
      const covered: VerifiedReceipt[] = [];
      let total = 0n;
      for (const v of fresh) {
        if (total + v.fields.feeWei > candidate.balanceWei) break;
        total += v.fields.feeWei;
        covered.push(v);
      }
      if (covered.length === 0) {
        plan.held =
          fresh.length === 0
            ? 'no receipt above the settled nonce'
            : `the balance (${candidate.balanceWei} wei) does not cover the next receipt (${fresh[0]!.fields.feeWei} wei)`;
        continue;
      }
      const tree = buildUserTree(covered.map((v) => v.leaf));
      const nonce = covered.at(-1)!.fields.seq;
      const user = getAddress(candidate.user);
      const signature = await this.deps.key.signer.signTypedData(this.deps.domain, SETTLEMENT_EIP712.types, {
        requestsHash: tree.root,
        nonce,
        provider: this.deps.providerAddress,
        user,
        totalFee: total,
      });
      const item: JournalItem = {
        user,
        nonce,
        totalFeeWei: total,
        requestsHash: tree.root,
        signature,
        receipts: covered.map((v) => ({ jobId: v.jobId, leaf: v.leaf })),
      };
      signed.push(item);
      plan.item = { ...item, proofs: tree.proofs, resent: false };
    }
    // Durable before any of these signatures reaches the caller.
    journal.recordSigned(signed);
    return plans;
  }

  /**
   * Verifies the items the database records for the candidate above the chain's nonce and takes the good
   * ones into the journal: every item this key signed raises the floor; those whose receipts are proven
   * become outstanding. Returns the alerts for the rest.
   */
  private adoptRecorded(candidate: SettlementCandidate): ItemAlert[] {
    const alerts: ItemAlert[] = [];
    const adopted: JournalItem[] = [];
    let floor = 0n;
    for (const recorded of candidate.recorded ?? []) {
      if (recorded.nonce <= candidate.chainNonce) continue; // can never land: the chain's nonce is the floor already
      const checked = verifyRecordedItem(recorded, {
        signer: this.deps.key.address,
        user: candidate.user,
        provider: this.deps.providerAddress,
        domain: this.deps.domain,
      });
      if (checked.kind === 'forged') {
        alerts.push({ kind: 'forged', nonce: recorded.nonce, source: recorded.source, reason: checked.reason });
        continue;
      }
      if (recorded.nonce > floor) floor = recorded.nonce;
      if (checked.kind === 'unprovable') {
        alerts.push({ kind: 'unprovable', nonce: recorded.nonce, source: recorded.source, reason: checked.reason });
        continue;
      }
      adopted.push(checked.item);
    }
    if (floor > 0n) this.deps.journal.adopt(candidate.user, adopted, floor);
    return alerts;
  }

  /**
   * The journal's outstanding items for the candidate once those that must never be sent are retired,
   * and the one to send now (see the class comment).
   */
  private sendableOutstanding(candidate: SettlementCandidate, alerts: ItemAlert[]): { all: JournalItem[]; next: JournalItem | undefined } {
    const { journal } = this.deps;
    for (const item of journal.outstandingItems(candidate.user)) {
      const passed = item.receipts.find((r) => BigInt(r.leaf[8]) <= candidate.chainNonce);
      if (!passed) continue;
      journal.retire(item);
      alerts.push({
        kind: 'overlapped',
        nonce: item.nonce,
        source: 'journal',
        reason: `it covers receipt ${passed.jobId} (sequence ${passed.leaf[8]}), at or below the chain's nonce ${candidate.chainNonce}: an item signed without knowledge of it landed first`,
      });
    }
    const all = journal.outstandingItems(candidate.user);
    const next = all.find((item, i) => {
      const seqs = new Set(item.receipts.map((r) => r.leaf[8]));
      return !all.slice(i + 1).some((higher) => higher.receipts.some((r) => seqs.has(r.leaf[8])));
    });
    return { all, next };
  }
}

/** What a recorded item must be to count: this key's signature over its fields, in this domain, for this user and provider. */
export interface RecordedItemExpectation {
  signer: string;
  user: string;
  provider: string;
  domain: TypedDataDomain;
}

export type RecordedItemCheck =
  | { kind: 'forged'; reason: string }
  | { kind: 'unprovable'; reason: string }
  | { kind: 'proven'; item: JournalItem };

/**
 * Checks an item the database records: `forged` unless this key signed exactly its user, provider, nonce,
 * totalFee and requestsHash in this domain; `unprovable` when it did, but the recorded leaves do not
 * rebuild the requestsHash (or disagree with the signed nonce and total); else the item as signed, with
 * its receipts and leaves.
 */
export function verifyRecordedItem(recorded: RecordedSignedItem, expect: RecordedItemExpectation): RecordedItemCheck {
  const same = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();
  if (!same(recorded.user, expect.user)) return { kind: 'forged', reason: `recorded for user ${recorded.user}, not ${expect.user}` };
  let user: string;
  let recovered: string;
  try {
    user = getAddress(recorded.user);
    recovered = verifyTypedData(
      expect.domain,
      SETTLEMENT_EIP712.types,
      { requestsHash: recorded.requestsHash, nonce: recorded.nonce, provider: expect.provider, user, totalFee: recorded.totalFeeWei },
      recorded.signature,
    );
  } catch (err) {
    return { kind: 'forged', reason: `the item or its signature is malformed (${(err as Error).message.split('\n')[0]})` };
  }
  if (!same(recovered, expect.signer)) {
    return { kind: 'forged', reason: `the signature over its fields recovers to ${recovered}, not this TEE key ${expect.signer}` };
  }
  const unprovable = (reason: string): RecordedItemCheck => ({ kind: 'unprovable', reason });
  if (recorded.receipts.length === 0) return unprovable('it records no receipts');
  const receipts: JournalItem['receipts'] = [];
  let total = 0n;
  let highest = 0n;
  const seqs = new Set<string>();
  try {
    for (const { jobId, leaf } of recorded.receipts) {
      if (!leaf) return unprovable(`the database has no leaf for ${jobId}`);
      if (leaf[0].toLowerCase() !== jobIdAsBytes32(jobId) || !same(leaf[1], user) || !same(leaf[2], expect.provider)) {
        return unprovable(`the leaf recorded for ${jobId} names another job, user or provider`);
      }
      const seq = BigInt(leaf[8]);
      if (seqs.has(leaf[8])) return unprovable(`sequence ${leaf[8]} twice`);
      seqs.add(leaf[8]);
      if (seq > highest) highest = seq;
      total += BigInt(leaf[6]);
      receipts.push({ jobId, leaf });
    }
    if (highest !== recorded.nonce || total !== recorded.totalFeeWei) {
      return unprovable(`its leaves add up to ${total} wei up to sequence ${highest}, not the signed ${recorded.totalFeeWei} wei at nonce ${recorded.nonce}`);
    }
    if (buildUserTree(receipts.map((r) => r.leaf)).root.toLowerCase() !== recorded.requestsHash.toLowerCase()) {
      return unprovable('its recorded leaves do not rebuild the signed requestsHash');
    }
  } catch (err) {
    return unprovable(`a recorded leaf is malformed (${(err as Error).message.split('\n')[0]})`);
  }
  return {
    kind: 'proven',
    item: { user, nonce: recorded.nonce, totalFeeWei: recorded.totalFeeWei, requestsHash: recorded.requestsHash, signature: recorded.signature, receipts },
  };
}

/** Whose receipt it must be to count for this user: signed by this key, naming this user and provider. */
export interface ReceiptExpectation {
  signer: string;
  user: string;
  provider: string;
}

/**
 * Checks one stored receipt from its signed text alone and rebuilds its leaf; a rejection says why. The
 * JSON fields and the database columns beside the text are never read.
 */
export function verifyReceipt(jobId: string, receipt: ReceiptJson, expect: ReceiptExpectation): VerifiedReceipt | ReceiptRejection {
  const same = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();
  const invalid = (reason: string, seq?: bigint): ReceiptRejection => ({ jobId, kind: 'invalid', reason, seq });
  const fields = typeof receipt?.text === 'string' ? parseReceiptText(receipt.text) : undefined;
  if (!fields) return invalid('the receipt text is not a well-formed image receipt');
  let signer: string;
  try {
    signer = recoverTextSigner(receipt.text, receipt.signature);
  } catch {
    return invalid('the receipt signature is malformed', fields.seq);
  }
  if (!same(signer, expect.signer) || !same(fields.signer, expect.signer)) return invalid(`signed by ${signer}, not by this TEE key ${expect.signer}`, fields.seq);
  if (!same(fields.user, expect.user)) return invalid(`the signed receipt names user ${fields.user}`, fields.seq);
  if (!same(fields.provider, expect.provider)) return invalid(`the signed receipt names provider ${fields.provider}`, fields.seq);
  if (fields.job !== jobId) return invalid(`the signed receipt is for job ${fields.job}`, fields.seq);
  if (fields.feeWei <= 0n) return invalid('the signed receipt has no fee', fields.seq);
  if (fields.seq === undefined) return { jobId, kind: 'unsequenced', seq: undefined, reason: 'a v1 receipt has no sequence number' };
  const withSeq = { ...fields, seq: fields.seq };
  return { jobId, fields: withSeq, leaf: leafOf(withSeq) };
}

export function isVerified(r: VerifiedReceipt | ReceiptRejection): r is VerifiedReceipt {
  return 'leaf' in r;
}
