import { Router, type Request, type Response } from 'express';
import { PixeldError } from '../../errors.js';
import { isExpired, isTerminal, JOB_ID_PATTERN, type Job } from '../../jobs/model.js';
import { webhookPollField } from '../../webhooks/job-body.js';
import type { WebhookFormat } from '../../webhooks/outbox.js';
import type { AppDeps } from '../app.js';
import { setReceiptHeaders } from './attestation.js';
import { expiredError, renderImagesResponse, sendJson, theRouterJobBody, zeroGPollBody, type ImagesResponse } from '../render.js';

/**
 * Polling and cancelling. `/v1/async/jobs/{id}` answers in 0G's shape (expired → 404), `/v1/jobs/{id}`
 * in theRouter's (expired → status "expired"). Both honour `?wait=N` (or `Prefer: wait=N`) to hold the
 * poll open until the job ends, and tell unfinished pollers when to come back with Retry-After (seconds)
 * and retry-after-ms.
 */
export function jobRoutes(deps: AppDeps): Router {
  const router = Router();

  for (const [path, shape] of [['/v1/async/jobs/:jobId', '0g'], ['/v1/jobs/:jobId', 'therouter']] as const) {
    router.get(path, async (req, res) => {
      const job = await waitIfAsked(deps, req, await findJob(deps, req, String(req.params.jobId)));
      const body = await pollBody(deps, job, shape);
      await setPollHeaders(deps, job, res);
      sendJson(res, body);
    });
  }

  const cancel = (shape: '0g' | 'therouter') => async (req: Request, res: Response) => {
    const found = await findJob(deps, req, String(req.params.jobId));
    if (found.status === 'completed' || found.status === 'failed') {
      throw new PixeldError('job_not_cancellable', `job ${found.id} has already ${found.status === 'completed' ? 'completed' : 'failed'}`);
    }
    const job = (await deps.service.cancel(found.id, { requestId: req.requestId })) ?? found;
    res.json(shape === '0g' ? zeroGPollBody(job, undefined) : theRouterJobBody(job, deps.now(), undefined));
  };
  router.post('/v1/async/jobs/:jobId/cancel', cancel('0g'));
  router.post('/v1/jobs/:jobId/cancel', cancel('therouter'));
  return router;
}

/**
 * What a poll of the job answers now, in 0G's shape or theRouter's. A 0G poll of a completed job whose
 * images have expired is a 404, thrown here.
 */
export async function pollBody(deps: AppDeps, job: Job, shape: WebhookFormat): Promise<Record<string, unknown>> {
  const expired = job.status === 'completed' && isExpired(job, deps.now());
  if (shape === '0g') {
    if (expired) throw expiredError(job);
    return withWebhook(deps, job, '0g', zeroGPollBody(job, await responseIfCompleted(deps, job), deps.service.progressOf(job.id)));
  }
  const response = expired ? undefined : await responseIfCompleted(deps, job);
  return withWebhook(deps, job, 'therouter', theRouterJobBody(job, deps.now(), response, deps.service.progressOf(job.id)));
}

/** The poll body with its `webhook` field (where the job's end goes, how the delivery stands) when the job has one. */
async function withWebhook(deps: AppDeps, job: Job, format: WebhookFormat, body: Record<string, unknown>): Promise<Record<string, unknown>> {
  if (job.webhook === undefined) return body;
  const [delivery] = isTerminal(job.status) ? await deps.webhookOutbox.webhookDeliveries(job.id) : [];
  return { ...body, webhook: webhookPollField(job, delivery, format) };
}

/** The caller's job of this id; 404 for an unknown id and for someone else's job alike. */
export async function findJob(deps: AppDeps, req: Request, id: string): Promise<Job> {
  const job = JOB_ID_PATTERN.test(id) ? await deps.service.get(id) : undefined;
  // Someone else's job reads exactly like a job that does not exist, so ids cannot be probed.
  if (!job || job.owner !== req.owner) throw new PixeldError('job_not_found', `no job with id ${id}`);
  return job;
}

async function waitIfAsked(deps: AppDeps, req: Request, job: Job): Promise<Job> {
  const seconds = requestedWaitSeconds(req, deps.config.jobs.maxLongPollSeconds);
  if (seconds === 0 || isTerminal(job.status)) return job;
  const gone = new AbortController();
  const onClose = () => gone.abort();
  req.on('close', onClose);
  try {
    return (await deps.service.waitForEnd(job.id, seconds * 1000, AbortSignal.any([gone.signal, deps.service.shutdownSignal]))) ?? job;
  } finally {
    req.off('close', onClose);
  }
}

function requestedWaitSeconds(req: Request, max: number): number {
  const fromQuery = req.query.wait;
  const fromPrefer = /(?:^|[,;\s])wait=(\d+)/i.exec(String(req.headers.prefer ?? ''))?.[1];
  const raw = typeof fromQuery === 'string' ? fromQuery : fromPrefer;
  if (raw === undefined) return 0;
  if (!/^\d+(\.\d+)?$/.test(raw)) {
    throw new PixeldError('invalid_request', `wait must be a number of seconds from 0 to ${max}`, { param: 'wait' });
  }
  const seconds = Number(raw);
  if (seconds > max) throw new PixeldError('invalid_request', `wait must be at most ${max} seconds`, { param: 'wait' });
  return seconds;
}

async function responseIfCompleted(deps: AppDeps, job: Job): Promise<ImagesResponse | undefined> {
  return job.status === 'completed' ? renderImagesResponse(job, deps.base64Images, deps.now()) : undefined;
}

async function setPollHeaders(deps: AppDeps, job: Job, res: Response): Promise<void> {
  if (job.status === 'completed') setReceiptHeaders(res, job);
  await setRetryAfterHeaders(deps, job, res);
}

/**
 * Tells the caller of an unfinished job when to come back, on the submit's 202 as on every poll: 0G's
 * router forwards a provider's Retry-After from both. retry-after-ms (the OpenAI SDK's name) is the
 * estimate unrounded: a client that reads it comes back when the job should be done rather than at the
 * next whole second, and never later than Retry-After says.
 */
export async function setRetryAfterHeaders(deps: AppDeps, job: Job, res: Response): Promise<void> {
  if (job.status !== 'pending' && job.status !== 'processing') return;
  const after = await deps.service.retryAfter(job);
  res.setHeader('Retry-After', String(after.seconds));
  res.setHeader('retry-after-ms', String(after.ms));
}
