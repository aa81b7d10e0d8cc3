import { isAddress, type TypedDataDomain } from 'ethers';
import { SETTLEMENT_EIP712 } from '../../chain/serving-contract.js';
import { buildUserTree } from '../leaf.js';
import type { BatchItem, ReceiptRecord } from '../store.js';
import { readAccounts } from './chain-reads.js';
import type { SettlerDeps } from './types.js';

/**
 * Steps 2–4 of a round up to the signature (billing.md): who is settled, in which chunks, with which
 * nonce, over which receipts — and the TEE key's EIP-712 signature of each item.
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

/**
 * One signed item per user: nonce = max(on-chain Account.nonce, the last nonce this daemon used) + 1 —
 * monotonic whatever the clock does, and above anything sent before a crash; requestsHash = the Merkle
 * root of the receipts' leaves; totalFee = the sum of their fees.
 */
export async function buildItems(
  deps: Pick<SettlerDeps, 'billing' | 'chain' | 'providerAddress' | 'tee'>,
  chunk: readonly UserReceipts[],
): Promise<BatchItem[]> {
  const accounts = await readAccounts(
    deps.chain,
    deps.providerAddress,
    chunk.map((c) => c.user),
  );
  const domain = settlementDomain(deps);
  const items: BatchItem[] = [];
  for (const { user, receipts } of chunk) {
    const chainNonce = accounts.get(user.toLowerCase())?.nonce ?? 0n;
    const used = (await deps.billing.lastNonce(user)) ?? 0n;
    const nonce = (chainNonce > used ? chainNonce : used) + 1n;
    const tree = buildUserTree(receipts.map((r) => r.leaf));
    const totalFeeWei = receipts.reduce((sum, r) => sum + r.feeWei, 0n);
    const signature = await deps.tee.signer.signTypedData(domain, SETTLEMENT_EIP712.types, {
      requestsHash: tree.root,
      nonce,
      provider: deps.providerAddress,
      user,
      totalFee: totalFeeWei,
    });
    items.push({
      user,
      nonce,
      totalFeeWei,
      requestsHash: tree.root,
      signature,
      receipts: receipts.map((r, i) => ({ jobId: r.jobId, proof: tree.proofs[i]! })),
    });
  }
  return items;
}
