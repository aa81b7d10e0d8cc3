import { Router, type Request, type Response } from 'express';
import { PixeldError } from '../../errors.js';
import { maxOutputPixels } from '../../images/normalize-output.js';
import { isExpired, isTerminal, type Job, type JobStatus } from '../../jobs/model.js';
import type { JobEvent, JobEventType } from '../../jobs/store.js';
import type { WebhookFormat } from '../../webhooks/outbox.js';
import type { AppDeps } from '../app.js';
import { toPixeldError } from '../errors.js';
import { convertedPreview, SseStream } from '../image-stream.js';
import { expiredError, jsonBody } from '../render.js';
import { findJob, pollBody } from './jobs.js';

/**
 * `GET /v1/async/jobs/{id}/events` (and `/v1/jobs/{id}/events`): a job's history as a `text/event-stream`
 * for clients that would rather not poll. Every stored job event is sent with its `seq` as the SSE id, so a
 * client that reconnects with Last-Event-ID gets exactly what it missed; the terminal event carries the
 * poll's body (in the family's shape) and ends the stream. Progress and partial images are live only: they
 * have no id, are never stored, and come only from the replica that runs the job. Closing the stream does
 * not cancel the job.
 */

/** The store is read again at least this often: a job event whose notification was missed arrives this late at most. */
const REREAD_MS = 1_000;
/** Progress is looked at this often and sent only when it changed: two progress events a second at most. */
const PROGRESS_MS = 500;

/** The job's status right after each kind of event; undefined: the event does not change it. */
const STATUS_AFTER: Record<JobEventType, JobStatus | undefined> = {
  queued: 'pending',
  started: 'processing',
  lease_renewal_refused: undefined,
  lease_expired: 'pending',
  retry_scheduled: 'pending',
  released: 'pending',
  succeeded: 'completed',
  failed: 'failed',
  cancelled: 'cancelled',
  interrupted: 'pending',
  results_expired: undefined,
};

const TERMINAL_EVENTS: ReadonlySet<JobEventType> = new Set(['succeeded', 'failed', 'cancelled']);

export function jobEventStreamRoutes(deps: AppDeps): Router {
  const router = Router();
  // Per owner, on this replica: a stream holds a socket and wakes every half second.
  const openStreams = new Map<string, number>();
  for (const [path, shape] of [
    ['/v1/async/jobs/:jobId/events', '0g'],
    ['/v1/jobs/:jobId/events', 'therouter'],
  ] as const) {
    router.get(path, async (req, res) => {
      const job = await findJob(deps, req, String(req.params.jobId));
      const after = resumePoint(req);
      if (shape === '0g' && job.status === 'completed' && isExpired(job, deps.now())) throw expiredError(job);
      // EventSource reconnects whenever a stream ends, with the last id it got; 204 is what tells it to stop.
      if (isTerminal(job.status) && (await nothingLeftToSend(deps, job, after))) {
        res.status(204).end();
        return;
      }
      const max = deps.config.jobs.maxEventStreamsPerOwner;
      const open = openStreams.get(req.owner) ?? 0;
      if (open >= max) {
        throw new PixeldError('rate_limit_exceeded', `you already have ${max} job event streams open; close one before opening another`, {
          retryAfterSeconds: 5,
        });
      }
      openStreams.set(req.owner, open + 1);
      try {
        await streamEvents(deps, job, shape, after, req, res);
      } finally {
        const left = (openStreams.get(req.owner) ?? 1) - 1;
        if (left > 0) openStreams.set(req.owner, left);
        else openStreams.delete(req.owner);
      }
    });
  }
  return router;
}

/**
 * Whether a stream of this ended job would send nothing: the client already has its last event, or the job
 * ended before histories were kept and has none. An expiry noted after the end is no reason to reconnect.
 */
async function nothingLeftToSend(deps: AppDeps, job: Job, after: number): Promise<boolean> {
  const events = await deps.service.jobEvents(job.id);
  return !events.some((e) => e.seq > after && e.type !== 'results_expired');
}

/**
 * The seq to resume after: Last-Event-ID (as EventSource sends it on reconnecting), else `?last_event_id`, else 0.
 * Empty is the start, as an event stream's empty last event id means none.
 */
function resumePoint(req: Request): number {
  const header = req.headers['last-event-id'];
  const query = req.query.last_event_id;
  const [raw, param] = header !== undefined ? [header, 'Last-Event-ID'] : [query, 'last_event_id'];
  if (raw === undefined || raw === '') return 0;
  if (typeof raw !== 'string' || !/^\d{1,15}$/.test(raw)) {
    throw new PixeldError('invalid_request', `${param} must be the id of an event of this job's stream (a whole number)`, { param });
  }
  return Number(raw);
}

async function streamEvents(deps: AppDeps, job: Job, shape: WebhookFormat, after: number, req: Request, res: Response): Promise<void> {
  const stream = new SseStream(res);
  stream.open({ 'X-Job-Id': job.id });
  const stop = new AbortController();
  const onClose = () => {
    stream.abandon();
    stop.abort();
  };
  res.on('close', onClose);
  // Gone while the job was looked up: its close event has already passed.
  if (res.socket === null || res.socket.destroyed) onClose();
  // The client reconnects with Last-Event-ID and misses nothing; the cap frees sockets held by forgotten clients.
  const cap = setTimeout(() => stop.abort(), deps.config.jobs.eventStreamMaxSeconds * 1000);
  cap.unref();
  const signal = AbortSignal.any([stop.signal, deps.service.shutdownSignal]);
  const limits = { maxPixels: maxOutputPixels(deps.config.limits) };
  const relayPartialImage = (image: Uint8Array, index: number) => {
    stream
      .send('job.partial_image', async () => {
        const converted = await convertedPreview(job.params, image, limits);
        if (converted === undefined) return undefined;
        return jsonBody({
          job_id: job.id,
          b64_json: converted.bytes.toString('base64'),
          partial_image_index: index,
          output_format: job.params.outputFormat,
        });
      })
      .catch((err: unknown) => deps.logger.warn('could not send a partial image', { jobId: job.id, requestId: req.requestId, error: String(err) }));
  };
  let unlisten: (() => void) | undefined;
  try {
    let sentSeq = after;
    let status: JobStatus | undefined;
    let progress: number | undefined;
    let readAtMs = -Infinity;
    let readNow = true;
    while (!signal.aborted) {
      if (readNow || Date.now() - readAtMs >= REREAD_MS) {
        readAtMs = Date.now();
        const events = await deps.service.jobEvents(job.id);
        for (const event of events) {
          status = STATUS_AFTER[event.type] ?? status;
          if (event.seq <= sentSeq) continue;
          await stream.send(`job.${event.type}`, () => eventData(deps, job, shape, event, status), event.seq);
          sentSeq = event.seq;
        }
        const last = events.filter((e) => e.type !== 'results_expired').at(-1);
        if (last !== undefined && TERMINAL_EVENTS.has(last.type)) break;
        // No history while streaming: the sweeper deleted the finished job with its events; nothing more will come.
        if (last === undefined && isTerminal((await deps.service.get(job.id))?.status ?? 'failed')) break;
        // Previews belong after the started event that this stream has now sent (a late stream gets those sent so far).
        if (status === 'processing') unlisten ??= deps.service.livePartialImagesOf(job.id)?.listen(relayPartialImage);
      }
      const now = deps.service.progressOf(job.id);
      // This replica runs the job, whose started event the store has but this stream has not read yet.
      readNow = now !== undefined && status !== 'processing';
      if (now !== undefined && status === 'processing' && now !== progress) {
        progress = now;
        await stream.send('job.progress', async () => jsonBody({ job_id: job.id, percent: now }));
      }
      readNow = (await pause(deps, job.id, PROGRESS_MS, signal)) || readNow;
    }
  } catch (err) {
    await stream.sendError(toPixeldError(err, deps.logger, req.requestId));
  } finally {
    res.off('close', onClose);
    clearTimeout(cap);
    unlisten?.();
    await stream.end();
  }
}

/** One stored event's data; a terminal one's carries what a poll of the job answers now. */
async function eventData(deps: AppDeps, job: Job, shape: WebhookFormat, event: JobEvent, status: JobStatus | undefined): Promise<Buffer> {
  const data: Record<string, unknown> = {
    job_id: job.id,
    seq: event.seq,
    type: event.type,
    at: new Date(event.atMs).toISOString(),
    attempt: event.attempt,
    status,
    detail: event.detail,
  };
  if (TERMINAL_EVENTS.has(event.type)) {
    const ended = await deps.service.get(job.id);
    if (ended !== undefined) data.poll = await pollBody(deps, ended, shape);
  }
  return jsonBody(data);
}

/** Waits `ms`, or until the job is heard to end (true) or `signal` aborts. */
async function pause(deps: AppDeps, jobId: string, ms: number, signal: AbortSignal): Promise<boolean> {
  const slice = new AbortController();
  const timer = setTimeout(() => slice.abort(), ms);
  const onAbort = () => slice.abort();
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    await deps.service.untilFinished(jobId, slice.signal);
    return true;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
    signal.removeEventListener('abort', onAbort);
  }
}
