import { Router } from 'express';
import { isAddress } from 'ethers';
import { LEAF_FIELDS, LEAF_TYPES, leafHashOf } from '../../billing/leaf.js';
import { PixeldError } from '../../errors.js';
import { JOB_ID_PATTERN } from '../../jobs/model.js';
import type { ReceiptRecord } from '../../billing/store.js';
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

  router.get('/v1/receipts', async (req, res) => {
    const query = req.query as Record<string, unknown>;
    const one = (name: string): string | undefined => {
      const v = query[name];
      if (v === undefined) return undefined;
      if (typeof v !== 'string') throw new PixeldError('invalid_request', `${name} must be given once`, { param: name });
      return v;
    };
    const user = one('user');
    // A 0G caller is their address (any case); an API-key caller is their owner id (exactly).
    const own = user === undefined || user === req.owner || (isAddress(user) && isAddress(req.owner) && user.toLowerCase() === req.owner.toLowerCase());
    if (!own) throw new PixeldError('forbidden', 'receipts can only be listed for yourself: user must be your own address (or be left out)', { param: 'user' });
    const limitText = one('limit');
    const limit = limitText === undefined ? RECEIPTS_PAGE_DEFAULT : /^[1-9][0-9]{0,3}$/.test(limitText) ? Number(limitText) : Number.NaN;
    if (!(limit <= RECEIPTS_PAGE_MAX)) throw new PixeldError('invalid_request', `limit must be a whole number from 1 to ${RECEIPTS_PAGE_MAX}`, { param: 'limit' });
    const afterText = one('after');
    if (afterText !== undefined && !/^(0|[1-9][0-9]{0,77})$/.test(afterText)) {
      throw new PixeldError('invalid_request', 'after must be a receipt sequence number (next_after of the previous page)', { param: 'after' });
    }
    const sinceCreated = parseSince(one('since'));
    const page = await deps.billing.receiptsOf(req.owner, { afterSeq: BigInt(afterText ?? '0'), sinceCreated, limit: limit + 1 });
    const data = page.slice(0, limit);
    const hasMore = page.length > limit;
    res.json({
      object: 'list',
      data: data.map(receiptView),
      has_more: hasMore,
      next_after: hasMore ? data[data.length - 1]!.seq!.toString() : null,
    });
  });

  router.get('/v1/receipts/:jobId', async (req, res) => {
    const jobId = String(req.params.jobId);
    const receipt = JOB_ID_PATTERN.test(jobId) ? await deps.billing.getReceipt(jobId) : undefined;
    if (!receipt || receipt.user !== req.owner) throw new PixeldError('not_found', `no receipt for job ${jobId}`);
    res.json(receiptView(receipt));
  });

  return router;
}

/** Receipts per page of GET /v1/receipts when `limit` is not given. */
export const RECEIPTS_PAGE_DEFAULT = 100;
/** The most receipts one page of GET /v1/receipts holds. */
export const RECEIPTS_PAGE_MAX = 1000;

/** `since`: unix seconds, or an ISO 8601 time; receipts created at or after it. */
function parseSince(text: string | undefined): number {
  if (text === undefined) return 0;
  if (/^[0-9]{1,12}$/.test(text)) return Number(text);
  const ms = /^[0-9]{4}-[0-9]{2}-[0-9]{2}/.test(text) ? Date.parse(text) : Number.NaN;
  if (Number.isNaN(ms)) throw new PixeldError('invalid_request', 'since must be unix seconds or an ISO 8601 time', { param: 'since' });
  return Math.ceil(ms / 1000);
}

/**
 * A receipt as served: its signed text and signature (in `receipt`), its billing leaf, its state and,
 * once it is part of a batch, the requestsHash (Merkle root) of the user's item and its proof — with the
 * transaction and block once the chain has settled it.
 */
function receiptView(receipt: ReceiptRecord) {
  const settled = receipt.state === 'settled' || receipt.state === 'partial';
  return {
    job_id: receipt.jobId,
    seq: receipt.seq === undefined ? null : receipt.seq.toString(),
    state: receipt.state,
    note: receipt.note ?? null,
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
    settlement:
      settled || (receipt.state === 'in_flight' && receipt.root !== undefined)
        ? {
            requests_hash: receipt.root ?? null,
            proof: receipt.proof ?? null,
            tx_hash: settled ? (receipt.settledTx ?? null) : null,
            block: settled ? (receipt.settledBlock ?? null) : null,
            outcome: receipt.state === 'settled' ? 'SUCCESS' : receipt.state === 'partial' ? 'PARTIAL' : 'PENDING',
          }
        : null,
  };
}
