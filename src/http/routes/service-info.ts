import { timingSafeEqual } from 'node:crypto';
import { pipeline } from 'node:stream';
import { formatEther } from 'ethers';
import { Router } from 'express';
import { PixeldError } from '../../errors.js';
import { BlobNotFoundError } from '../../images/blob-store.js';
import { formatOf } from '../../images/sniff.js';
import { isExpired, JOB_ID_PATTERN } from '../../jobs/model.js';
import type { AppDeps } from '../app.js';

/** The catalogue, health probes, and the files behind `response_format: "url"` results. */
export function serviceInfoRoutes(deps: AppDeps): Router {
  const router = Router();

  // OpenAI's list shape (the official client lists it), with what a router needs to choose and price a
  // provider; the 0G fields (type, pricing.image, verifiability, tee_attested, rate_limits) as 0G's router reads them.
  router.get('/v1/models', (_req, res) => {
    const { rateLimits } = deps.config;
    const verdicts = deps.priceGuard?.report().models;
    const attested = deps.attestation.tee !== 'none';
    res.json({
      object: 'list',
      data: deps.catalog.models.map((m) => ({
        id: m.id,
        object: 'model',
        created: deps.startedAtSeconds,
        owned_by: 'pixeld',
        description: m.description,
        type: m.capabilities.includes('generation') ? 'text-to-image' : 'image-editing',
        capabilities: { generation: m.capabilities.includes('generation'), edit: m.capabilities.includes('edit') },
        sizes: m.sizes,
        default_size: deps.catalog.defaultSize(m),
        // n above a caller's images per minute is refused too (invalid_n): the largest n that can succeed.
        max_n: Math.min(m.maxN, rateLimits.imagesPerMinute),
        extensions: m.extensions,
        pricing: { image: m.pricePerImageWei.toString(), unit: 'wei', image_0g: formatEther(m.pricePerImageWei) },
        rate_limits: { requests_per_minute: rateLimits.requestsPerMinute, images_per_minute: rateLimits.imagesPerMinute },
        // Honest about dev mode: a key in a plain file attests nothing.
        verifiability: attested ? 'TeeML' : 'none',
        tee_attested: attested,
        tee: deps.attestation.tee,
        signing_address: deps.attestation.binding.signing_address,
        // Only where 0G users are served: whether the chain's price allows billing them for this model now.
        ...(verdicts ? { billable_0g: verdicts[m.id]?.billable ?? false } : {}),
      })),
    });
  });

  router.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });

  router.get('/readyz', async (_req, res) => {
    const report = await deps.readiness.check();
    res.status(report.ready ? 200 : 503).json(report);
  });

  router.get('/v1/files/:jobId/:token/:name', async (req, res) => {
    const { jobId, token, name } = req.params;
    const match = /^(\d{1,2})\.(png|jpeg|webp)$/.exec(name);
    const job = JOB_ID_PATTERN.test(jobId) && match ? await deps.service.get(jobId) : undefined;
    const result = job?.result;
    if (!job || !result || !sameToken(result.fileToken, token)) throw new PixeldError('not_found', 'no such file');
    if (isExpired(job, deps.now())) throw new PixeldError('job_expired', 'this result has expired');
    const image = result.images[Number(match![1])];
    if (!image || formatOf(image.mediaType) !== match![2]) throw new PixeldError('not_found', 'no such file');
    const stream = await deps.blobs.openReadStream(image.sha256).catch((err: unknown) => {
      throw err instanceof BlobNotFoundError ? new PixeldError('job_expired', 'this result has expired') : err;
    });
    res.setHeader('Content-Type', image.mediaType);
    res.setHeader('Content-Length', String(image.bytes));
    res.setHeader('Cache-Control', 'private, max-age=3600, immutable');
    // The headers are out: a blob swept or a database lost mid-way can only cut the body off.
    pipeline(stream, res, () => undefined);
  });

  return router;
}

function sameToken(expected: string, given: string): boolean {
  const a = Buffer.from(expected);
  const b = Buffer.from(given);
  return a.length === b.length && timingSafeEqual(a, b);
}
