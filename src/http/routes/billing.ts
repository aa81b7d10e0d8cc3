import { Router } from 'express';
import { isAddress } from 'ethers';
import { LEAF_FIELDS, LEAF_TYPES, leafHashOf } from '../../billing/leaf.js';
import { PixeldError } from '../../errors.js';
import { JOB_ID_PATTERN } from '../../jobs/model.js';
import type { AppDeps } from '../app.js';

/**
 * What a paying user can see: what they owe (0G's SDK asks before every request it prepares) and, per job,
 * the signed receipt with its billing leaf and — once settled — the Merkle proof against the requestsHash
 * sent on chain. Only the caller's own figures: anyone else's read like ones that do not exist.
 */
export function billingRoutes(deps: AppDeps): Router {
  const router = Router();

  router.get('/v1/user/:address/unsettledfee', async (req, res) => {
    const address = String(req.params.address);
    if (!isAddress(address) || address.toLowerCase() !== req.owner.toLowerCase()) {
      throw new PixeldError('not_found', 'unsettled fees can only be read for your own address');
    }
    res.json({ unsettledFee: (await deps.billing.unsettledWei(req.owner)).toString() });
  });

  router.get('/v1/receipts/:jobId', async (req, res) => {
    const jobId = String(req.params.jobId);
    const receipt = JOB_ID_PATTERN.test(jobId) ? await deps.billing.getReceipt(jobId) : undefined;
    if (!receipt || receipt.user !== req.owner) throw new PixeldError('not_found', `no receipt for job ${jobId}`);
    const settled = receipt.state === 'settled' || receipt.state === 'partial';
    res.json({
      job_id: receipt.jobId,
      state: receipt.state,
      receipt: receipt.receipt,
      // An API-key caller's receipt (`offchain`: its router bills it) names no address: it has no on-chain
      // leaf; nor has a v1 receipt (no sequence number), which is never settled.
      leaf:
        receipt.state === 'offchain' || receipt.receipt.version === 1
          ? null
          : {
              fields: LEAF_FIELDS,
              types: LEAF_TYPES,
              values: receipt.leaf,
              hash: leafHashOf(receipt.leaf),
            },
      settlement: settled
        ? {
            requests_hash: receipt.root,
            proof: receipt.proof,
            tx_hash: receipt.settledTx,
            block: receipt.settledBlock,
            outcome: receipt.state === 'settled' ? 'SUCCESS' : 'PARTIAL',
          }
        : null,
    });
  });

  return router;
}
