import { PixeldError } from '../errors.js';
import { renderImagesResponse, theRouterJobBody, zeroGPollBody, type Base64Images, type ImagesResponse } from '../http/render.js';
import type { Job } from '../jobs/model.js';
import type { WebhookDelivery, WebhookFormat } from './outbox.js';

/**
 * What a delivery sends, and what a poll tells of the delivery. The body is the finished poll's answer in
 * the shape the job was submitted in (the same renderers as GET /v1/async/jobs/{id} and GET /v1/jobs/{id}),
 * without the poll's `webhook` field: a receiver gets the job, not the state of its own delivery.
 */

/** The finished job as its poll answers it; once its results expired, without the images. */
export async function finishedJobBody(job: Job, format: WebhookFormat, images: Base64Images, nowMs: number): Promise<Record<string, unknown>> {
  let response: ImagesResponse | undefined;
  if (job.status === 'completed') {
    try {
      response = await renderImagesResponse(job, images, nowMs);
    } catch (err) {
      if (!(err instanceof PixeldError && err.code === 'job_expired')) throw err;
    }
  }
  return format === '0g' ? zeroGPollBody(job, response) : theRouterJobBody(job, nowMs, response);
}

/**
 * The poll's `webhook` field: where the job's end goes and how its delivery stands, in the poll's own
 * conventions (0G's camelCase and ISO times, theRouter's snake_case and unix seconds). `pending` until
 * the job ends, and while attempts go on.
 */
export function webhookPollField(job: Job, delivery: WebhookDelivery | undefined, format: WebhookFormat): Record<string, unknown> | undefined {
  if (job.webhook === undefined) return undefined;
  const fields = {
    url: job.webhook.url,
    status: delivery?.state ?? 'pending',
    id: delivery?.id,
    event: delivery?.event,
    attempts: delivery?.attempts ?? 0,
    lastAttemptAt: delivery?.lastAttemptMs,
    lastStatusCode: delivery?.lastStatus,
    lastError: delivery?.lastError,
    nextAttemptAt: delivery?.nextAttemptMs,
    finishedAt: delivery?.finishedMs,
  };
  const time = (ms: number | undefined) => (ms === undefined ? undefined : format === '0g' ? new Date(ms).toISOString() : Math.floor(ms / 1000));
  const field: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    const name = format === '0g' ? key : key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    field[name] = key.endsWith('At') ? time(value as number) : value;
  }
  return field;
}
