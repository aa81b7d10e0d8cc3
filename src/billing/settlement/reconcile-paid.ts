import { buildUserTree } from '../leaf.js';
import { isVerified, verifyReceipt, type VerifiedReceipt } from '../../tee/settlement-signer.js';
import { findUserSettlements } from './chain-reads.js';
import type { RoundContext } from './types.js';

const SUCCESS = 0;
const PARTIAL = 1;

/**
 * Receipts the database calls unsettled although they are numbered at or below what was already settled
 * (the database was restored from an old copy, or its rows were edited): the chain decides what they are,
 * not the rows. They can never be charged again either way — the TEE signs no item over them. Each of
 * the user's settlements found in the chain's events covers exactly the receipts numbered above the
 * previous settlement's nonce up to its own; where those receipts' Merkle root is the item's
 * requestsHash, they are marked paid by that transaction. Whatever no settlement accounts for is `void`.
 */
export async function reconcilePaidReceipts(
  ctx: RoundContext,
  below: { user: string; chainNonce: bigint; jobIds: readonly string[] },
): Promise<void> {
  const { chain, providerAddress, logLookbackBlocks, billing, logger, tee, now } = ctx.deps;
  const open = new Set(below.jobIds);
  const settlements = (await findUserSettlements(chain, providerAddress, below.user, logLookbackBlocks)).filter(
    (s) => s.status === SUCCESS || s.status === PARTIAL,
  );
  let previousNonce = 0n;
  for (const s of settlements) {
    const rows = await billing.receiptsInSeqRange(below.user, previousNonce, s.nonce);
    previousNonce = s.nonce;
    const verified = rows
      .map((r) => verifyReceipt(r.jobId, r.receipt, { signer: tee.address, user: below.user, provider: providerAddress }))
      .filter(isVerified) as VerifiedReceipt[];
    if (verified.length === 0 || !verified.some((v) => open.has(v.jobId))) continue;
    const tree = buildUserTree(verified.map((v) => v.leaf));
    if (tree.root.toLowerCase() !== s.requestsHash.toLowerCase()) continue;
    const paid = verified.flatMap((v, i) => (open.has(v.jobId) ? [{ jobId: v.jobId, root: tree.root, proof: tree.proofs[i]! }] : []));
    await billing.markPaidOnChain(paid, s.status === SUCCESS ? 'settled' : 'partial', {
      txHash: s.txHash,
      block: s.block,
      nowMs: now(),
      note: 'found paid on chain after the database called it unsettled',
    });
    for (const p of paid) open.delete(p.jobId);
    logger.warn('settlement: receipts the database called unsettled were already paid on chain; marked settled from the chain', {
      user: below.user,
      receipts: paid.length,
      tx: s.txHash,
    });
  }
  if (open.size === 0) return;
  await billing.markUnbillable(
    [...open].map((jobId) => ({
      jobId,
      state: 'void' as const,
      note: `numbered at or below the settled nonce (on chain ${below.chainNonce}); no settlement of it found on chain`,
    })),
  );
  logger.error('settlement: ALERT — receipts numbered at or below the settled nonce were never found paid; they are void', {
    user: below.user,
    receipts: open.size,
    chainNonce: below.chainNonce.toString(),
  });
}
