import { openAsBlob } from 'node:fs';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { Agent, FormData, request } from 'undici';
import { readRss, resetPeakRss, sleep, startChildDaemon, startFakeBackendProcess, UNLIMITED_RATES, type ChildDaemon } from '../harness.js';
import type { BenchRow, BenchScenario } from '../table.js';

const JOBS = 1_000;
/** The run on glibc's default allocator settings runs fewer jobs (RSS plateaus within the first few hundred). */
const DEFAULT_ALLOCATOR_JOBS = 400;
const CLIENTS = 16;
const RSS_AFTER_JOBS_TARGET = 300 * 1024 * 1024;
const UPLOAD_BYTES = 100 * 1000 * 1000;
const UPLOAD_GROWTH_TARGET = 50 * 1024 * 1024;
const MB = 1024 * 1024;

/**
 * Issue #7's scenario 5: the daemon's memory, in a process of its own (`node dist/cli.js serve`, as `npm start`)
 * whose RSS is read from /proc/<pid>/status, so the benchmark's own memory does not count. (1) RSS after
 * 1,000 jobs with ~2.6 MB PNG results (noisy 1024², from the fake OpenAI-compatible backend), each
 * fetched by its client with a long poll: results live on disk, not in memory. (2) RSS growth while one
 * 100 MB image arrives as a multipart upload (and is checked) until the 202: uploads stream to disk.
 */
export const memoryScenario: BenchScenario = {
  name: 'memory',
  async run(): Promise<BenchRow[]> {
    return [...(await afterManyJobs()), ...(await whileUploading())];
  },
};

/**
 * glibc raises its mmap threshold to the size of the largest block freed (up to 32 MiB), after which
 * multi-MB image buffers come from the brk heap and the freed ones stay resident. `npm start` and the
 * Docker image fix the threshold at 1 MiB (PRODUCTION_ALLOCATOR_ENV), which the child daemons of the
 * bench get too; this scenario also measures node on glibc's defaults, to show what the setting is worth.
 */
async function afterManyJobs(): Promise<BenchRow[]> {
  const fake = await startFakeBackendProcess();
  try {
    const asStarted = await manyJobs(fake.url, {}, JOBS);
    const defaults = await manyJobs(fake.url, { MALLOC_MMAP_THRESHOLD_: undefined }, DEFAULT_ALLOCATOR_JOBS);
    const scenario = `memory: ${JOBS.toLocaleString('en-US')} jobs, ${(asStarted.resultBytes / 1e6).toFixed(1)} MB bodies (child process)`;
    const describe = (r: ManyJobs) =>
      `${r.delivered} delivered${r.failures.length > 0 ? `, failures: ${r.failures.slice(0, 3).join('; ')}` : ''}; idle ${(r.idle / MB).toFixed(0)} MiB, peak ${(r.peak / MB).toFixed(0)} MiB`;
    return [
      { scenario, figure: 'RSS idle after start', value: asStarted.idle / MB, unit: 'MiB', target: 'baseline', pass: null, note: 'node dist/cli.js serve, as npm start runs it' },
      {
        scenario,
        figure: 'RSS after all jobs',
        value: asStarted.after / MB,
        unit: 'MiB',
        target: `≤ ${RSS_AFTER_JOBS_TARGET / MB} MiB`,
        pass: asStarted.delivered === JOBS && asStarted.failures.length === 0 && asStarted.after <= RSS_AFTER_JOBS_TARGET,
        note: `${describe(asStarted)}; with MALLOC_MMAP_THRESHOLD_=1048576, as npm start and the Docker image set it`,
      },
      {
        scenario,
        figure: `RSS after ${DEFAULT_ALLOCATOR_JOBS} jobs, glibc's default allocator settings`,
        value: defaults.after / MB,
        unit: 'MiB',
        target: 'info',
        pass: null,
        note: `${describe(defaults)}; the difference is freed multi-MB buffers glibc keeps in its brk heap, not results`,
      },
    ];
  } finally {
    await fake.stop();
  }
}

interface ManyJobs {
  idle: number;
  after: number;
  peak: number;
  delivered: number;
  resultBytes: number;
  failures: string[];
}

async function manyJobs(backendUrl: string, env: NodeJS.ProcessEnv, jobs: number): Promise<ManyJobs> {
  const child = await startChildDaemon(
    {
      backends: [{ id: 'fake', type: 'openai', baseUrl: backendUrl, concurrency: 4, maxQueuedJobs: jobs }],
      models: [{ id: 'fake-image-model', backend: 'fake', capabilities: ['generation'], sizes: ['1024x1024'], maxInFlight: jobs }],
      rateLimits: UNLIMITED_RATES,
    },
    env,
  );
  try {
    const { url, pid } = child;
    const idle = readRss(pid).rss;
    const agent = new Agent({ connections: CLIENTS * 2 });
    let next = 0;
    let delivered = 0;
    let resultBytes = 0;
    const failures: string[] = [];
    let peak = idle;
    const sampler = setInterval(() => {
      peak = Math.max(peak, readRss(pid).rss);
    }, 20);
    const client = async () => {
      while (next < jobs) {
        const i = next++;
        // 32 seeds: the fake keeps 32 rendered pictures; more would make it the bottleneck.
        const submitted = await request(`${url}/v1/async/images/generations`, {
          dispatcher: agent,
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'fake-image-model', prompt: `memory job ${i}`, size: '1024x1024', seed: i % 32 }),
        });
        const { jobId } = (await submitted.body.json()) as { jobId?: string };
        if (!jobId) {
          failures.push(`submit ${submitted.statusCode}`);
          continue;
        }
        for (;;) {
          const polled = await request(`${url}/v1/async/jobs/${jobId}?wait=30`, { dispatcher: agent });
          const body = await polled.body.text();
          const status = (JSON.parse(body) as { status?: string }).status;
          if (status === 'pending' || status === 'processing') continue;
          if (status === 'completed') {
            delivered += 1;
            resultBytes = Math.max(resultBytes, body.length);
          } else failures.push(`job ended ${status}`);
          break;
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: CLIENTS }, client));
    } finally {
      clearInterval(sampler);
      await agent.close();
    }
    await sleep(2_000);
    const { rss: after, hwm } = readRss(pid);
    return { idle, after, peak: Math.max(peak, hwm), delivered, resultBytes, failures };
  } finally {
    await child.stop();
  }
}

async function whileUploading(): Promise<BenchRow[]> {
  const dir = mkdtempSync(path.join(tmpdir(), 'pixeld-bench-upload-'));
  let child: ChildDaemon | undefined;
  try {
    // A PNG of noise stored without compression: 5,773² RGB pixels ≈ 100 MB, under the 40 MP input limit.
    const side = Math.ceil(Math.sqrt(UPLOAD_BYTES / 3));
    const file = path.join(dir, 'big.png');
    writeFileSync(file, await sharp(randomBytes(side * side * 3), { raw: { width: side, height: side, channels: 3 } }).png({ compressionLevel: 0 }).toBuffer());
    child = await startChildDaemon({
      // One slot, held by a job that sleeps: the upload's edit job waits in the queue and is never run.
      backends: [{ id: 'ref', type: 'reference', concurrency: 1, latencyMsPerImage: 600_000 }],
      models: [{ id: 'ref-model', backend: 'ref', capabilities: ['generation', 'edit'], sizes: ['64x64'] }],
      limits: { maxInputImageBytes: 128 * MB },
      server: { maxBodyBytes: 128 * MB },
      rateLimits: UNLIMITED_RATES,
    });
    const { url, pid } = child;
    const hold = await request(`${url}/v1/async/images/generations`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'ref-model', prompt: 'hold the slot', size: '64x64' }),
    });
    await hold.body.dump();
    await sleep(1_000);
    const before = readRss(pid).rss;
    const peakReset = resetPeakRss(pid);
    let peak = before;
    const sampler = setInterval(() => {
      peak = Math.max(peak, readRss(pid).rss);
    }, 5);
    const form = new FormData();
    form.append('model', 'ref-model');
    form.append('prompt', 'make it winter');
    form.append('size', '64x64');
    form.append('image', await openAsBlob(file, { type: 'image/png' }), 'big.png');
    let status: number;
    let bodyText: string;
    try {
      const res = await request(`${url}/v1/async/images/edits`, { method: 'POST', body: form, headersTimeout: 120_000, bodyTimeout: 120_000 });
      status = res.statusCode;
      bodyText = await res.body.text();
    } finally {
      clearInterval(sampler);
    }
    const { rss: after, hwm } = readRss(pid);
    if (peakReset) peak = Math.max(peak, hwm);
    const growth = peak - before;
    const scenario = `memory: one ${UPLOAD_BYTES / 1e6} MB multipart upload (child process)`;
    const ok = status === 202;
    return [
      {
        scenario,
        figure: 'RSS growth until the 202',
        value: growth / MB,
        unit: 'MiB',
        target: `≤ ${UPLOAD_GROWTH_TARGET / MB} MiB`,
        pass: ok && growth <= UPLOAD_GROWTH_TARGET,
        note: `RSS before ${(before / MB).toFixed(0)} MiB, peak ${(peak / MB).toFixed(0)} MiB, after ${(after / MB).toFixed(0)} MiB${peakReset ? '' : ' (sampled every 5 ms: VmHWM could not be reset)'}${ok ? '' : `; answered ${status}: ${bodyText.slice(0, 200)}`}`,
      },
    ];
  } finally {
    await child?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
