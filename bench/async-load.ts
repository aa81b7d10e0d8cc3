import { performance } from 'node:perf_hooks';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { request } from 'undici';
import { createReferenceBackend } from '../src/backends/reference.js';
import type { BackendCallOptions, BackendCallResult, ImageBackend } from '../src/backends/types.js';
import { referenceBackendSchema } from '../src/config/schema.js';
import { backendCallOptions } from '../test/helpers/backend-call.js';
import type { ClientsInput, ClientsOutput } from './async-clients.js';
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
/**
 * Jobs per mode: the 1,000 for Retry-After and long-poll; fewer for retry-after-ms, an extra
 * mode that only shows what the unrounded estimate changes, to keep the whole suite near 10 minutes.
 */
export const JOBS_PER_MODE: Record<PollMode, number> = { 'retry-after': LOAD.jobs, 'long-poll': LOAD.jobs, 'retry-after-ms': 400 };
export const IDEAL_JOBS_PER_SECOND = (LOAD.concurrency * 1000) / LOAD.latencyMsPerImage;
const LONG_POLL_SECONDS = 30;
/** 64×64 keeps the reference renderer's own CPU time (~2.5 ms a picture, inside its 100 ms) small. */
const SIZE = '64x64';

export interface AsyncLoadResult {
  mode: PollMode;
  jobs: number;
  completed: number;
  wallSeconds: number;
  jobsPerSecond: number;
  /** Share of the wall time the backend's slots spent inside generate() calls. */
  backendBusy: number;
  /** Mean wall time of one generate() call (100 ms, rendering included, plus timers firing late). */
  backendCallMs: number;
  /**
   * Where the backend's slots stood idle, in slot-milliseconds: before the first call, after the last one
   * (clients still learning of their last results), and between calls (the daemon's share).
   */
  idleMs: { lead: number; between: number; tail: number };
  /** Per job: backend call end → client holds the completed body; sorted ascending. */
  timeToResultMs: number[];
  /** Poll requests per job, on average. */
  pollsPerJob: number;
  failures: string[];
}

/** The reference backend with a stopwatch: end time of each call by prompt, and total time in calls. */
class TimedBackend implements ImageBackend {
  readonly finishedAt = new Map<string, number>();
  /** [start, end] of every call, absolute ms. */
  readonly spans: Array<[number, number]> = [];
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
    this.finishedAt.set(options.prompt, performance.timeOrigin + ended);
    this.spans.push([performance.timeOrigin + started, performance.timeOrigin + ended]);
    return result;
  }

  checkHealth(signal: AbortSignal): Promise<void> {
    return this.inner.checkHealth(signal);
  }
}

let bare: Promise<number> | undefined;

/**
 * The baseline: the same reference backend called directly, `concurrency` calls at a time, no daemon.
 * Jobs per second it delivers on its own (each call lasts its 100 ms, rendering included).
 */
export function bareBackendJobsPerSecond(): Promise<number> {
  bare ??= (async () => {
    const backend = createReferenceBackend(referenceBackendConfig(0));
    const call = (i: number) =>
      backend.generate(backendCallOptions({ model: 'ref-model', prompt: `bare ${i}`, size: SIZE, seed: i, deadlineMs: Date.now() + 60_000 }));
    for (let i = 0; i < 2 * LOAD.concurrency; i += 1) await call(i);
    const calls = 60;
    let next = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: LOAD.concurrency }, async () => {
        while (next < calls) await call(next++);
      }),
    );
    return (calls * 1000) / (performance.now() - started);
  })();
  return bare;
}

function referenceBackendConfig(maxQueuedJobs: number) {
  return referenceBackendSchema.parse({
    id: 'ref',
    type: 'reference',
    concurrency: LOAD.concurrency,
    latencyMsPerImage: LOAD.latencyMsPerImage,
    ...(maxQueuedJobs > 0 ? { maxQueuedJobs } : {}),
  });
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
  const jobs = JOBS_PER_MODE[mode];
  const backendConfig = referenceBackendConfig(jobs);
  const backend = new TimedBackend(createReferenceBackend(backendConfig));
  const bench = await startBenchDaemon(
    {
      backends: [backendConfig],
      models: [{ id: 'ref-model', backend: 'ref', capabilities: ['generation'], sizes: [SIZE], maxInFlight: jobs }],
      rateLimits: UNLIMITED_RATES,
    },
    new Map([['ref', backend]]),
  );
  // A running daemon knows its backends' recent run times (loaded from the store at start); a fresh one
  // guesses 5 s an image for Retry-After until its first jobs end. Warm up, as production would be.
  for (let i = 0; i < 2 * LOAD.concurrency; i += 1) {
    const warm = await request(`${bench.url}/v1/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'ref-model', prompt: `warm-up ${i}`, size: SIZE }),
    });
    await warm.body.dump();
  }
  backend.busyMs = 0;
  backend.calls = 0;
  backend.spans.length = 0;

  let out: ClientsOutput;
  try {
    const input: ClientsInput = { url: bench.url, mode, jobs, clients: LOAD.clients, size: SIZE, longPollSeconds: LONG_POLL_SECONDS };
    // tsx's hooks are registered per thread: the worker registers them before loading the TypeScript module.
    const script = new URL('./async-clients.ts', import.meta.url).href;
    const boot = `import { register } from 'tsx/esm/api'; register(); await import(${JSON.stringify(script)});`;
    const worker = new Worker(boot, { eval: true, workerData: input });
    const [message] = (await once(worker, 'message')) as [{ output?: ClientsOutput; error?: string }];
    await worker.terminate();
    if (!message.output) throw new Error(`bench clients failed: ${message.error}`);
    out = message.output;
  } finally {
    await bench.close();
  }
  const wallMs = out.endedAt - out.startedAt;
  const timeToResultMs: number[] = [];
  for (const [prompt, at] of out.gotResult) {
    const finished = backend.finishedAt.get(prompt);
    if (finished !== undefined) timeToResultMs.push(at - finished);
  }
  timeToResultMs.sort((a, b) => a - b);
  return {
    mode,
    jobs,
    completed: out.completed,
    wallSeconds: wallMs / 1000,
    jobsPerSecond: (out.completed * 1000) / wallMs,
    backendBusy: backend.busyMs / (wallMs * LOAD.concurrency),
    backendCallMs: backend.busyMs / Math.max(1, backend.calls),
    idleMs: idleBreakdown(backend.spans, out.startedAt, out.endedAt),
    timeToResultMs,
    pollsPerJob: out.polls / Math.max(1, out.completed),
    failures: out.failures,
  };
}

/**
 * Splits the slots' idle time into lead, tail and between-calls. With `concurrency` slots, the first
 * `concurrency` call starts mark when each slot began working and the last `concurrency` ends when each
 * stopped; everything else idle lies between calls.
 */
function idleBreakdown(spans: Array<[number, number]>, startedAt: number, endedAt: number): AsyncLoadResult['idleMs'] {
  const slots = LOAD.concurrency;
  const starts = spans.map(([start]) => start).sort((a, b) => a - b);
  const ends = spans.map(([, end]) => end).sort((a, b) => a - b);
  const busy = spans.reduce((sum, [start, end]) => sum + (end - start), 0);
  const lead = starts.slice(0, slots).reduce((sum, start) => sum + (start - startedAt), 0);
  const tail = ends.slice(-slots).reduce((sum, end) => sum + (endedAt - end), 0);
  const between = (endedAt - startedAt) * slots - busy - lead - tail;
  return { lead, between, tail };
}
