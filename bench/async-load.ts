import { performance } from 'node:perf_hooks';
import { Agent, request } from 'undici';
import { createReferenceBackend } from '../src/backends/reference.js';
import type { BackendCallOptions, BackendCallResult, ImageBackend } from '../src/backends/types.js';
import { referenceBackendSchema } from '../src/config/schema.js';
import { startBenchDaemon, UNLIMITED_RATES } from './harness.js';

/**
 * Issue #7's scenarios 1 and 2 share one load: the reference backend at a fixed 100 ms per image and
 * concurrency 2 (ideal 20 jobs/s), and 1,000 async jobs from 50 clients, each submitting a job and
 * polling it to the end before taking the next, as real clients do: honouring Retry-After (or
 * retry-after-ms), or long-polling with `?wait=`. A wrapper around the backend records when each call ends, so the time from
 * "the backend has the images" to "the client has the result" can be measured.
 */

/**
 * `retry-after`: wait what Retry-After says (whole seconds), as 0G's broker and most HTTP clients do;
 * `retry-after-ms`: prefer retry-after-ms when present, as the OpenAI SDK does; `long-poll`: `?wait=30`.
 */
export type PollMode = 'retry-after' | 'retry-after-ms' | 'long-poll';

export const LOAD = { jobs: 1_000, clients: 50, latencyMsPerImage: 100, concurrency: 2 } as const;
export const IDEAL_JOBS_PER_SECOND = (LOAD.concurrency * 1000) / LOAD.latencyMsPerImage;
const LONG_POLL_SECONDS = 30;
/** 64×64 keeps the reference renderer's own CPU time (~2.5 ms a picture, before its 100 ms sleep) small. */
const SIZE = '64x64';

export interface AsyncLoadResult {
  mode: PollMode;
  jobs: number;
  completed: number;
  wallSeconds: number;
  jobsPerSecond: number;
  /** Share of the wall time the backend's slots spent inside generate() calls. */
  backendBusy: number;
  /** Mean wall time of one generate() call (100 ms sleep plus the renderer's own work). */
  backendCallMs: number;
  /** Per job: backend call end → client holds the completed body; sorted ascending. */
  timeToResultMs: number[];
  /** Poll requests per job, on average. */
  pollsPerJob: number;
  failures: string[];
}

/** The reference backend with a stopwatch: end time of each call by prompt, and total time in calls. */
class TimedBackend implements ImageBackend {
  readonly finishedAt = new Map<string, number>();
  busyMs = 0;
  calls = 0;

  constructor(private readonly inner: ImageBackend) {}

  get id() {
    return this.inner.id;
  }
  get type() {
    return this.inner.type;
  }
  get maxImagesPerCall() {
    return this.inner.maxImagesPerCall;
  }
  get rerunInterruptedJobs() {
    return this.inner.rerunInterruptedJobs;
  }

  async generate(options: BackendCallOptions): Promise<BackendCallResult> {
    const started = performance.now();
    const result = await this.inner.generate(options);
    const ended = performance.now();
    this.busyMs += ended - started;
    this.calls += 1;
    this.finishedAt.set(options.prompt, ended);
    return result;
  }

  checkHealth(signal: AbortSignal): Promise<void> {
    return this.inner.checkHealth(signal);
  }
}

const runs = new Map<PollMode, Promise<AsyncLoadResult>>();

/** One load run per mode per process: the saturation and time-to-result scenarios read the same run. */
export function asyncLoad(mode: PollMode): Promise<AsyncLoadResult> {
  let run = runs.get(mode);
  if (!run) {
    run = runAsyncLoad(mode);
    runs.set(mode, run);
  }
  return run;
}

async function runAsyncLoad(mode: PollMode): Promise<AsyncLoadResult> {
  const backendConfig = referenceBackendSchema.parse({
    id: 'ref',
    type: 'reference',
    concurrency: LOAD.concurrency,
    latencyMsPerImage: LOAD.latencyMsPerImage,
    maxQueuedJobs: LOAD.jobs,
  });
  const backend = new TimedBackend(createReferenceBackend(backendConfig));
  const bench = await startBenchDaemon(
    {
      backends: [backendConfig],
      models: [{ id: 'ref-model', backend: 'ref', capabilities: ['generation'], sizes: [SIZE], maxInFlight: LOAD.jobs }],
      rateLimits: UNLIMITED_RATES,
    },
    new Map([['ref', backend]]),
  );
  const agent = new Agent({ connections: LOAD.clients * 2, keepAliveTimeout: 60_000 });
  const gotResult = new Map<string, number>();
  const failures: string[] = [];
  let polls = 0;
  let next = 0;
  let completed = 0;

  const get = async (path: string): Promise<{ status: number; waitMs: number; body: Record<string, unknown> }> => {
    const res = await request(`${bench.url}${path}`, { dispatcher: agent });
    const body = (await res.body.json()) as Record<string, unknown>;
    const seconds = Number(res.headers['retry-after']);
    const ms = Number(res.headers['retry-after-ms']);
    const waitMs = mode === 'retry-after-ms' && ms > 0 ? ms : seconds * 1000;
    return { status: res.statusCode, waitMs, body };
  };

  const client = async (): Promise<void> => {
    while (next < LOAD.jobs) {
      const index = next++;
      const prompt = `bench ${mode} job ${index}`;
      const submitted = await request(`${bench.url}/v1/async/images/generations`, {
        dispatcher: agent,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'ref-model', prompt, size: SIZE }),
      });
      const { jobId } = (await submitted.body.json()) as { jobId?: string };
      if (submitted.statusCode !== 202 || jobId === undefined) {
        failures.push(`submit answered ${submitted.statusCode}`);
        continue;
      }
      const path = `/v1/async/jobs/${jobId}${mode === 'long-poll' ? `?wait=${LONG_POLL_SECONDS}` : ''}`;
      for (;;) {
        const poll = await get(path);
        polls += 1;
        const status = poll.body.status;
        if (status === 'completed') {
          gotResult.set(prompt, performance.now());
          completed += 1;
          break;
        }
        if (status !== 'pending' && status !== 'processing') {
          failures.push(`job ${jobId} ended ${String(status)} (HTTP ${poll.status})`);
          break;
        }
        if (mode !== 'long-poll') {
          if (!(poll.waitMs > 0)) failures.push(`poll of a ${status} job without Retry-After`);
          await new Promise((r) => setTimeout(r, poll.waitMs > 0 ? poll.waitMs : 1000));
        }
      }
    }
  };

  // A running daemon knows its backends' recent run times (loaded from the store at start); a fresh one
  // guesses 5 s an image for Retry-After until its first jobs end. Warm up, as production would be.
  for (let i = 0; i < 2 * LOAD.concurrency; i += 1) {
    const warm = await request(`${bench.url}/v1/images/generations`, {
      dispatcher: agent,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'ref-model', prompt: `warm-up ${i}`, size: SIZE }),
    });
    await warm.body.dump();
  }
  backend.busyMs = 0;
  backend.calls = 0;

  const started = performance.now();
  try {
    await Promise.all(Array.from({ length: LOAD.clients }, client));
  } finally {
    await agent.close();
    await bench.close();
  }
  const wallMs = performance.now() - started;
  const timeToResultMs: number[] = [];
  for (const [prompt, at] of gotResult) {
    const finished = backend.finishedAt.get(prompt);
    if (finished !== undefined) timeToResultMs.push(at - finished);
  }
  timeToResultMs.sort((a, b) => a - b);
  return {
    mode,
    jobs: LOAD.jobs,
    completed,
    wallSeconds: wallMs / 1000,
    jobsPerSecond: (completed * 1000) / wallMs,
    backendBusy: backend.busyMs / (wallMs * LOAD.concurrency),
    backendCallMs: backend.busyMs / Math.max(1, backend.calls),
    timeToResultMs,
    pollsPerJob: polls / Math.max(1, completed),
    failures,
  };
}
