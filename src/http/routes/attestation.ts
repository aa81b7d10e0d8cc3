import { Router, type Response } from 'express';
import { PixeldError } from '../../errors.js';
import { JOB_ID_PATTERN, type Job } from '../../jobs/model.js';
import type { JobSignature } from '../../tee/receipt.js';
import type { AppDeps } from '../app.js';
import { clientKeyOf } from '../client-address.js';

/**
 * What lets a router or user trust the bytes: the attestation report binding the signing key, 0G's legacy
 * quote, and the signatures of each completed job. The signature routes answer without credentials
 * (0G's SDK sends none); the unguessable job id is the capability.
 */
export function attestationRoutes(deps: AppDeps): Router {
  const router = Router();

  router.get('/v1/attestation/report', async (req, res) => {
    const nonce = req.query.nonce;
    if (nonce !== undefined && typeof nonce !== 'string') {
      throw new PixeldError('invalid_request', 'nonce must be given once, as 64 hex characters', { param: 'nonce' });
    }
    const report = await deps.attestation.report(nonce, clientKeyOf(req.ip));
    res.setHeader('Cache-Control', nonce === undefined ? 'public, max-age=60' : 'no-store');
    res.json(report);
  });

  router.get('/v1/quote', async (_req, res) => {
    const { body, signature } = await deps.attestation.legacyQuote();
    res.setHeader('ZG-Quote-Signature', signature);
    res.type('text/plain').send(body);
  });

  router.get(['/v1/proxy/signature/:id', '/v1/signature/:id'], async (req, res) => {
    const id = String(req.params.id);
    if (!JOB_ID_PATTERN.test(id)) throw new PixeldError('not_found', `no signature for id ${id}`);
    // A billed job's signature is kept with its receipt, which is never deleted; a free job's with its record.
    const receipt = await deps.billing.getReceipt(id);
    const signature = receipt?.signature ? { ...receipt.signature, receipt: receipt.receipt } : (await deps.service.get(id))?.signature;
    if (!signature) throw new PixeldError('not_found', `no signature for id ${id}`);
    res.json(signatureBody(signature));
  });

  return router;
}

export function signatureBody(signature: JobSignature): Record<string, unknown> {
  return {
    text: signature.text,
    signature: signature.signature,
    signing_address: signature.signingAddress,
    signing_algo: 'ecdsa',
    receipt: signature.receipt,
  };
}

/** Headers on every response that carries a job's images: the id that opens the signature, and the receipt's. */
export function setReceiptHeaders(res: Response, job: Job): void {
  res.setHeader('ZG-Res-Key', job.id);
  if (job.signature) {
    res.setHeader('X-Receipt-Signature', job.signature.receipt.signature);
    res.setHeader('X-Receipt-Signer', job.signature.signingAddress);
    res.setHeader('X-Receipt-Fee-Wei', job.signature.receipt.fee_wei);
  }
}
