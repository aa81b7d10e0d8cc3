import { isAddress, type TypedDataDomain } from 'ethers';
import { SETTLEMENT_EIP712 } from '../../chain/serving-contract.js';
import type { BatchItem, ReceiptRecord } from '../store.js';
import { readAccounts } from './chain-reads.js';
import type { RecordedSignedItem, SettlementCandidate } from '../../tee/settlement-signer.js';
import type { ResolvedSettlerDeps, SettlerDeps } from './types.js';

/**
 * Steps 2–4 of a round up to the signature (billing.md): who is settled, in which chunks, over which
 * receipts — and the TEE's signed item for each user.
 */

export interface UserReceipts {
  user: string;
  receipts: ReceiptRecord[];
}

/**
 * Unsettled receipts of 0G users grouped by user (oldest first, at most maxReceiptsPerUserPerRound each)
 * and cut into chunks of at most usersPerTransaction users: one transaction each, one item per user.
 */
export async function groupReceipts(
  deps: Pick<SettlerDeps, 'billing' | 'billingConfig' | 'providerAddress' | 'logger'>,
  only?: readonly string[],
): Promise<UserReceipts[][]> {
  const wanted = only === undefined ? undefined : new Set(only.map((u) => u.toLowerCase()));
  const owing = (await deps.billing.usersWithUnsettled())
    .filter((u) => isAddress(u.user) && (wanted === undefined || wanted.has(u.user.toLowerCase())))
    .sort((a, b) => (a.user.toLowerCase() < b.user.toLowerCase() ? -1 : 1));
  const groups: UserReceipts[] = [];
  for (const { user } of owing) {
    const all = await deps.billing.unsettledReceipts(user, deps.billingConfig.maxReceiptsPerUserPerRound);
    // A receipt names the provider it was earned under; another wallet cannot collect it (the contract
    // pays msg.sender, and the leaf would not match). Kept, never dropped, until that wallet settles it.
    const receipts = all.filter((r) => r.provider.toLowerCase() === deps.providerAddress.toLowerCase());
    if (receipts.length < all.length) {
      deps.logger.warn('settlement: receipts earned under another provider address are left unsettled', {
        user,
        receipts: all.length - receipts.length,
        provider: deps.providerAddress,
      });
    }
    if (receipts.length > 0) groups.push({ user, receipts });
  }
  const size = Math.min(deps.billingConfig.usersPerTransaction, 50);
  const chunks: UserReceipts[][] = [];
  for (let i = 0; i < groups.length; i += size) chunks.push(groups.slice(i, i + size));
  return chunks;
}

export function settlementDomain(deps: Pick<SettlerDeps, 'chain'>): TypedDataDomain {
  return {
    name: SETTLEMENT_EIP712.domain.name,
    version: SETTLEMENT_EIP712.domain.version,
    chainId: deps.chain.chainId,
    verifyingContract: deps.chain.servingAddress,
  };
}

export interface PreparedChunk {
  /** One item per user to send (new, or an outstanding one again: the journal's or one the database records). */
  items: BatchItem[];
  /** Users with nothing to send this round, and why. */
  held: Array<{ user: string; reason: string }>;
  /** Receipts numbered at or below what the chain (or the journal) has settled: paid or void, never owed. */
  belowNonce: Array<{ user: string; chainNonce: bigint; jobIds: string[] }>;
}

/**
 * Has the TEE's settlement signer decide and sign one item per user (tee/settlement-signer.ts: leaves,
 * fees and nonces come from the receipts' signed texts, never from these rows), against the accounts as
 * the chain shows them now and the items the database records as signed above their nonces (by this
 * settler or another sharing the key; the signer verifies them and logs an ALERT for any it cannot use). Receipts that fail verification are marked `invalid` (an alert), v1 receipts
 * `void`, unless this is a dry run.
 */
export async function buildItems(
  deps: Pick<ResolvedSettlerDeps, 'billing' | 'chain' | 'providerAddress' | 'settlementSigner' | 'logger'>,
  chunk: readonly UserReceipts[],
  options: { dryRun?: boolean } = {},
): Promise<PreparedChunk> {
  const accounts = await readAccounts(
    deps.chain,
    deps.providerAddress,
    chunk.map((c) => c.user),
  );
  const candidates: SettlementCandidate[] = [];
  for (const { user, receipts } of chunk) {
    const account = accounts.get(user.toLowerCase());
    const chainNonce = account?.nonce ?? 0n;
    // What any settler sharing the key recorded as signed: a replica's journal knows only its own items.
    const recorded = (await deps.billing.signedItemsAbove(user, chainNonce)).map(
      ({ batchId, batchState, item, leaves }): RecordedSignedItem => ({
        source: `batch ${batchId} (${batchState})`,
        user: item.user,
        nonce: item.nonce,
        totalFeeWei: item.totalFeeWei,
        requestsHash: item.requestsHash,
        signature: item.signature,
        receipts: item.receipts.map((r, i) => ({ jobId: r.jobId, leaf: leaves[i] })),
      }),
    );
    candidates.push({
      user,
      chainNonce,
      balanceWei: account?.balance ?? 0n,
      receipts: receipts.map((r) => ({ jobId: r.jobId, receipt: r.receipt })),
      recorded,
    });
  }
  const plans = await deps.settlementSigner.plan(candidates);
  const prepared: PreparedChunk = { items: [], held: [], belowNonce: [] };
  const unbillable: Array<{ jobId: string; state: 'invalid' | 'void'; note: string }> = [];
  for (const plan of plans) {
    for (const alert of plan.itemAlerts) {
      const what =
        alert.kind === 'forged'
          ? 'a settlement item the database records is not signed by this TEE key over its fields; it is ignored'
          : alert.kind === 'unprovable'
            ? 'a settlement item signed by this TEE key cannot be matched to its receipts; its nonce counts, it is never sent'
            : 'a settlement item signed by this TEE key overlaps one that landed first; it is never sent';
      deps.logger.error(`settlement: ALERT — ${what}`, {
        user: plan.user,
        nonce: alert.nonce.toString(),
        source: alert.source,
        reason: alert.reason,
      });
    }
    const below = plan.rejected.filter((r) => r.kind === 'below-nonce').map((r) => r.jobId);
    if (below.length > 0) prepared.belowNonce.push({ user: plan.user, chainNonce: accounts.get(plan.user.toLowerCase())?.nonce ?? 0n, jobIds: below });
    for (const r of plan.rejected) {
      if (r.kind === 'invalid') {
        deps.logger.error('settlement: ALERT — a receipt fails verification against the TEE key; it is never settled', {
          user: plan.user,
          jobId: r.jobId,
          reason: r.reason,
        });
        unbillable.push({ jobId: r.jobId, state: 'invalid', note: r.reason });
      } else if (r.kind === 'unsequenced') {
        unbillable.push({ jobId: r.jobId, state: 'void', note: 'v1 receipt without a sequence number: it cannot be settled without risking a double charge' });
      }
    }
    if (plan.item) {
      const { item } = plan;
      prepared.items.push({
        user: item.user,
        nonce: item.nonce,
        totalFeeWei: item.totalFeeWei,
        requestsHash: item.requestsHash,
        signature: item.signature,
        receipts: item.receipts.map((r, i) => ({ jobId: r.jobId, proof: item.proofs[i]! })),
      });
    } else {
      prepared.held.push({ user: plan.user, reason: plan.held ?? 'nothing to settle' });
    }
  }
  if (!options.dryRun && unbillable.length > 0) await deps.billing.markUnbillable(unbillable);
  return prepared;
}
