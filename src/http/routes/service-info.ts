import { createReadStream } from 'node:fs';
import { timingSafeEqual } from 'node:crypto';
import { Router } from 'express';
import { PixeldError } from '../../errors.js';
import { formatOf } from '../../images/sniff.js';
import { isExpired, JOB_ID_PATTERN } from '../../jobs/model.js';
import type { AppDeps } from '../app.js';

/** The catalogue, health probes, and the files behind `response_format: "url"` results. */
export function serviceInfoRoutes(deps: AppDeps): Router {
  const router = Router();

  router.get('/v1/models', (_req, res) => {
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
        max_n: m.maxN,
        extensions: m.extensions,
        pricing: { image: m.pricePerImageWei.toString(), unit: 'wei' },
        // Honest about dev mode: a key in a plain file attests nothing.
        verifiability: deps.teeAttested ? 'TeeML' : 'none',
        tee_attested: deps.teeAttested,
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
    res.setHeader('Content-Type', image.mediaType);
    res.setHeader('Content-Length', String(image.bytes));
    res.setHeader('Cache-Control', 'private, max-age=3600, immutable');
    const stream = createReadStream(deps.blobs.pathOf(image.sha256));
    stream.on('error', () => res.destroy());
    stream.pipe(res);
  });

  return router;
}

function sameToken(expected: string, given: string): boolean {
  const a = Buffer.from(expected);
  const b = Buffer.from(given);
  return a.length === b.length && timingSafeEqual(a, b);
}
