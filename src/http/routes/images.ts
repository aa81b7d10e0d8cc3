import { Router, type Request, type Response } from 'express';
import { PixeldError } from '../../errors.js';
import { removeQuietly } from '../../images/blob-store.js';
import { maxOutputPixels } from '../../images/normalize-output.js';
import type { Job, JobKind } from '../../jobs/model.js';
import { LivePartialImages } from '../../jobs/partial-images.js';
import type { AppDeps } from '../app.js';
import { sendError, toPixeldError } from '../errors.js';
import { parseImageRequest, type ParsedImageRequest } from '../image-request.js';
import { completedEvent, completedEventName, partialImageEvent, partialImageEventName, SseStream, StreamedPartialImages } from '../image-stream.js';
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
  const asyncSubmit = mode === 'async-0g' || req.query.async === 'true';
  // A client gone while its image_urls download: nobody will take the answer, so the downloads stop.
  const gone = new AbortController();
  const onClose = () => {
    if (!res.writableFinished) gone.abort();
  };
  res.on('close', onClose);
  const request = await parseImageRequest(kind, body, {
    catalog: deps.catalog,
    limits: deps.config.limits,
    tmpPath: () => deps.blobs.tempPath(),
    asyncSubmit,
    signal: gone.signal,
  }).finally(() => res.off('close', onClose));
  const { webhook, reservation } = await admit(deps, req, res, request, mode).catch(async (err: unknown) => {
    // The uploads are the service's from submit on; refused before it, they are ours to remove.
    await Promise.all([...request.images, ...(request.mask ? [request.mask] : [])].map((i) => removeQuietly(i.tmpPath)));
    throw err;
  });
  const delivery = asyncSubmit ? 'async' : 'sync';
  const partials = request.stream && request.stream.partialImages > 0 ? new StreamedPartialImages(request.stream.partialImages) : undefined;
  const livePartials = request.eventPartialImages > 0 ? new LivePartialImages(request.eventPartialImages) : undefined;
  const { job, created } = await deps.service.submit(request, {
    owner: req.owner,
    reservation,
    delivery,
    idempotencyKey,
    baseUrl: baseUrlOf(deps, req),
    requestId: req.requestId,
    partialImages: partials ?? livePartials,
    webhook,
  });
  res.setHeader('X-Job-Id', job.id);
  if (livePartials !== undefined && created) releaseWhenEnded(deps, job);
  if (delivery === 'async') await setRetryAfterHeaders(deps, job, res);

  if (mode === 'async-0g') {
    res.status(created ? 202 : 200).json({ jobId: job.id, status: job.status === 'processing' ? 'processing' : 'pending' });
    return;
  }
  if (req.query.async === 'true') {
    res.status(created ? 202 : 200).location(`/v1/jobs/${job.id}`).json(theRouterJobBody(job, deps.now(), undefined));
    return;
  }
  // A replay (same Idempotency-Key) streams the first request's job: its previews stay with that request's sink.
  if (request.stream) await streamWhenDone(deps, job, created ? partials : undefined, req, res);
  else await answerWhenDone(deps, job, req, res);
}

/**
 * An async job's previews are kept for its event streams until it ends, then let go: nobody streams them
 * from a job that is over. The wait re-reads the job each second, as a sync request's does.
 */
function releaseWhenEnded(deps: AppDeps, job: Job): void {
  deps.service
    .waitForEnd(job.id, Number.MAX_SAFE_INTEGER, deps.service.shutdownSignal)
    .catch((err: unknown) => deps.logger.warn('lost track of a job with partial images', { jobId: job.id, error: String(err) }))
    .finally(() => deps.service.stopPartialImages(job.id));
}

/** The checks between a parsed request and its job: price guard, webhook URL, image allowance, reservation. */
async function admit(deps: AppDeps, req: Request, res: Response, request: ParsedImageRequest, mode: Mode) {
  // Never bill a 0G user more than the chain advertises for this model (billing/price guard).
  if (req.account !== undefined) deps.priceGuard?.assertBillable(request.model.id);
  const webhook = await deps.webhooks.forSubmit(req.owner, request.webhookUrl, mode === 'async-0g' ? '0g' : 'therouter');
  const allowance = await deps.rateLimiter.takeImages(req.owner, request.params.n);
  for (const [name, value] of Object.entries(allowance.headers)) res.setHeader(name, value);
  const reservation = await deps.admission.reservationFor(req.owner, req.account, request.model.pricePerImageWei);
  return { webhook, reservation };
}

/**
 * Waits for a sync caller's job to end. If the caller goes away first, the job is cancelled (nobody is left
 * to receive the images) and undefined is returned; if the daemon begins to stop, the job is cancelled and
 * the retryable 503 thrown, which tells the caller to come back.
 */
async function untilSyncJobEnds(deps: AppDeps, job: Job, req: Request, res: Response): Promise<Job | undefined> {
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
      return undefined;
    }
    if (stopping.aborted && unfinished) {
      await deps.service.cancel(job.id, { requestId: req.requestId, reason: 'the daemon is shutting down' });
      throw stopping.reason;
    }
    if (!ended) throw new PixeldError('job_not_found', `job ${job.id} disappeared`);
    return ended;
  } finally {
    res.off('close', onClose);
  }
}

async function answerWhenDone(deps: AppDeps, job: Job, req: Request, res: Response): Promise<void> {
  const ended = await untilSyncJobEnds(deps, job, req, res);
  if (ended === undefined) return;
  if (ended.status === 'completed') {
    const response = await renderImagesResponse(ended, deps.base64Images, deps.now());
    setReceiptHeaders(res, ended);
    sendJson(res.status(200), response);
    return;
  }
  sendError(res, failureOf(ended));
}

/**
 * `stream: true`: the same sync job, answered as OpenAI's event stream. The headers go out at once with the
 * job id and the key that will sign it; partial images follow as the backend renders them, then the
 * completed event with the signed image, or an `error` event. The receipt is the job's, as for any sync
 * answer (GET /v1/signature/{id}).
 */
async function streamWhenDone(
  deps: AppDeps,
  job: Job,
  partials: StreamedPartialImages | undefined,
  req: Request,
  res: Response,
): Promise<void> {
  const stream = new SseStream(res);
  stream.open({ 'ZG-Res-Key': job.id, 'X-Receipt-Signer': deps.attestation.binding.signing_address });
  const limits = { maxPixels: maxOutputPixels(deps.config.limits) };
  partials?.listen((image, index) => {
    stream
      .send(partialImageEventName(job.kind), () => partialImageEvent(job.kind, job.params, image, index, limits, deps.now()))
      .catch((err: unknown) => deps.logger.warn('could not send a partial image', { jobId: job.id, requestId: req.requestId, error: String(err) }));
  });
  try {
    const ended = await untilSyncJobEnds(deps, job, req, res);
    if (ended === undefined) {
      stream.abandon();
      return;
    }
    if (ended.status === 'completed') {
      const response = await renderImagesResponse(ended, deps.base64Images, deps.now());
      await stream.send(completedEventName(job.kind), async () => completedEvent(job.kind, response));
    } else {
      await stream.sendError(failureOf(ended));
    }
  } catch (err) {
    await stream.sendError(toPixeldError(err, deps.logger, req.requestId));
  } finally {
    if (partials) deps.service.stopPartialImages(job.id);
    await stream.end();
  }
}

function failureOf(job: Job): PixeldError {
  return new PixeldError(job.error?.code ?? 'internal_error', job.error?.message ?? 'the job failed');
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
