import { Router, type Request, type Response } from 'express';
import { PixeldError } from '../../errors.js';
import type { Job, JobKind } from '../../jobs/model.js';
import type { AppDeps } from '../app.js';
import { sendError } from '../errors.js';
import { parseImageRequest } from '../image-request.js';
import { readImageRequestBody } from '../read-body.js';
import { renderImagesResponse, sendJson, theRouterJobBody } from '../render.js';
import { setReceiptHeaders } from './attestation.js';
import { setRetryAfterHeaders } from './jobs.js';

/**
 * Submitting work. The sync endpoints (`/v1/images/*`, `/v1/proxy/images/*`) answer with the images;
 * the async ones answer 202 at once: `/v1/async/images/*` in 0G's shape, and `?async=true` on the sync
 * paths in theRouter's shape. All of them make the same job.
 */
export function imageRoutes(deps: AppDeps): Router {
  const router = Router();
  for (const kind of ['generation', 'edit'] as const) {
    const path = kind === 'generation' ? 'generations' : 'edits';
    router.post([`/v1/images/${path}`, `/v1/proxy/images/${path}`], (req, res) => submit(deps, kind, req, res, 'sync'));
    router.post(`/v1/async/images/${path}`, (req, res) => submit(deps, kind, req, res, 'async-0g'));
  }
  return router;
}

type Mode = 'sync' | 'async-0g';

async function submit(deps: AppDeps, kind: JobKind, req: Request, res: Response, mode: Mode): Promise<void> {
  const idempotencyKey = readIdempotencyKey(req);
  // Before the body: a caller over its allowance must not make the daemon read, store or decode an upload.
  await deps.rateLimiter.takeRequest(req.owner);
  const body = await readImageRequestBody(req, res, {
    maxBodyBytes: deps.config.server.maxBodyBytes,
    maxFileBytes: deps.config.limits.maxInputImageBytes,
    maxFiles: deps.config.limits.maxInputImages + 1,
    tmpDir: deps.blobs.tmpDir,
  });
  const request = await parseImageRequest(kind, body, {
    catalog: deps.catalog,
    limits: deps.config.limits,
    tmpPath: () => deps.blobs.tempPath(),
  });
  // Never bill a 0G user more than the chain advertises for this model (billing/price guard).
  if (req.account !== undefined) deps.priceGuard?.assertBillable(request.model.id);
  const allowance = await deps.rateLimiter.takeImages(req.owner, request.params.n);
  for (const [name, value] of Object.entries(allowance.headers)) res.setHeader(name, value);
  const reservation = await deps.admission.reservationFor(req.owner, req.account, request.model.pricePerImageWei);
  const delivery = mode === 'sync' && req.query.async !== 'true' ? 'sync' : 'async';
  const { job, created } = await deps.service.submit(request, {
    owner: req.owner,
    reservation,
    delivery,
    idempotencyKey,
    baseUrl: baseUrlOf(deps, req),
    requestId: req.requestId,
  });
  res.setHeader('X-Job-Id', job.id);
  if (delivery === 'async') await setRetryAfterHeaders(deps, job, res);

  if (mode === 'async-0g') {
    res.status(created ? 202 : 200).json({ jobId: job.id, status: job.status === 'processing' ? 'processing' : 'pending' });
    return;
  }
  if (req.query.async === 'true') {
    res.status(created ? 202 : 200).location(`/v1/jobs/${job.id}`).json(theRouterJobBody(job, deps.now(), undefined));
    return;
  }
  await answerWhenDone(deps, job, req, res);
}

/**
 * A sync caller waits on the open connection. If it goes away first, the job is cancelled: nobody is
 * left to receive the images.
 */
async function answerWhenDone(deps: AppDeps, job: Job, req: Request, res: Response): Promise<void> {
  const gone = new AbortController();
  const onClose = () => {
    if (!res.writableFinished) gone.abort();
  };
  res.on('close', onClose);
  const stopping = deps.service.shutdownSignal;
  try {
    const ended = await deps.service.waitForEnd(job.id, Number.MAX_SAFE_INTEGER, AbortSignal.any([gone.signal, stopping]));
    const unfinished = ended !== undefined && (ended.status === 'pending' || ended.status === 'processing');
    if (gone.signal.aborted) {
      if (unfinished) {
        await deps.service.cancel(job.id, { requestId: req.requestId, reason: 'the sync caller disconnected' });
      }
      return;
    }
    if (stopping.aborted && unfinished) {
      // The caller would otherwise lose its connection with no answer; a retryable 503 tells it to come back.
      await deps.service.cancel(job.id, { requestId: req.requestId, reason: 'the daemon is shutting down' });
      throw stopping.reason;
    }
    if (!ended) throw new PixeldError('job_not_found', `job ${job.id} disappeared`);
    if (ended.status === 'completed') {
      const response = await renderImagesResponse(ended, deps.base64Images, deps.now());
      setReceiptHeaders(res, ended);
      sendJson(res.status(200), response);
      return;
    }
    const code = ended.error?.code ?? 'internal_error';
    sendError(res, new PixeldError(code, ended.error?.message ?? 'the job failed'));
  } finally {
    res.off('close', onClose);
  }
}

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

function readIdempotencyKey(req: Request): string | undefined {
  const value = req.headers['idempotency-key'];
  if (value === undefined) return undefined;
  if (Array.isArray(value) || !IDEMPOTENCY_KEY.test(value)) {
    throw new PixeldError('invalid_request', 'Idempotency-Key must be 1–255 printable ASCII characters without spaces', {
      param: 'Idempotency-Key',
    });
  }
  return value;
}

export function baseUrlOf(deps: AppDeps, req: Request): string {
  return deps.config.server.publicBaseUrl?.replace(/\/+$/, '') ?? `${req.protocol}://${req.get('host') ?? 'localhost'}`;
}
