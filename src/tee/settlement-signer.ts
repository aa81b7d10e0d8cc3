import { getAddress, type TypedDataDomain } from 'ethers';
import { SETTLEMENT_EIP712 } from '../chain/serving-contract.js';
import { buildUserTree, leafOf, type LeafValues } from '../billing/leaf.js';
import type { TeeKeyProvider } from './key-provider.js';
import { parseReceiptText, recoverTextSigner, type ReceiptFields, type ReceiptJson } from './receipt.js';
import type { JournalItem, SettlementJournal } from './settlement-journal.js';

/**
 * The only code that signs a TEESettlement. It trusts neither the database (the operator in `tdx` mode
 * can edit it, and is the party being paid) nor the RPC node's answers beyond what the contract itself
 * enforces:
 * - every leaf and fee is rebuilt from the receipt's signed text, and that signature must be this key's;
 * - only receipts numbered above both the on-chain nonce and the journal's highest signed nonce are
 *   covered, and the item's nonce is the highest number it covers — so the contract's `nonce >
 *   Account.nonce` rule refuses any receipt already paid, and no receipt is in two signed items;
 * - whole receipts only, in sequence order, as far as the balance covers: nothing is sent to come back
 *   PARTIAL and forfeit the rest;
 * - while an item is outstanding it is sent again as signed, never re-signed under another nonce.
 */

export interface SettlementCandidate {
  user: string;
  /** Account.nonce and balance as read for this round. */
  chainNonce: bigint;
  balanceWei: bigint;
  /** The user's receipts the database calls unsettled, as stored (untrusted). */
  receipts: Array<{ jobId: string; receipt: ReceiptJson }>;
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
  /** true: the journal's outstanding item, sent again exactly as signed before. */
  resent: boolean;
}

export interface SettlementPlan {
  user: string;
  item: SignedItem | undefined;
  /** Why nothing is sent for the user, when item is undefined. */
  held: string | undefined;
  rejected: ReceiptRejection[];
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

  /** Decides and signs one item per user; every new signature is in the journal before this returns. */
  async plan(candidates: readonly SettlementCandidate[]): Promise<SettlementPlan[]> {
    const { journal } = this.deps;
    const plans: SettlementPlan[] = [];
    const signed: JournalItem[] = [];
    for (const candidate of candidates) {
      journal.observeChainNonce(candidate.user, candidate.chainNonce);
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
      const outstanding = journal.outstanding(candidate.user);
      const inOutstanding = new Set(outstanding?.receipts.map((r) => r.jobId));
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
      const plan: SettlementPlan = { user: candidate.user, item: undefined, held: undefined, rejected };
      plans.push(plan);
      if (outstanding) {
        if (outstanding.totalFeeWei > candidate.balanceWei) {
          plan.held = `the item signed earlier (nonce ${outstanding.nonce}) needs ${outstanding.totalFeeWei} wei; the balance is ${candidate.balanceWei}`;
        } else {
          plan.item = { ...outstanding, proofs: buildUserTree(outstanding.receipts.map((r) => r.leaf)).proofs, resent: true };
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
