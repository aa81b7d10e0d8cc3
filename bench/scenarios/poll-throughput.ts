import { request } from 'undici';
import type { BackendCallOptions, BackendCallResult, ImageBackend } from '../../src/backends/types.js';
import { cannon, mergeRounds, startBenchDaemon, UNLIMITED_RATES, type CannonResult } from '../harness.js';
import type { BenchRow, BenchScenario } from '../table.js';
import { realisticPng } from './signing.js';

const CONNECTIONS = Number(process.env.PIXELD_BENCH_POLL_CONNECTIONS ?? 50);
const SECONDS = 9;
const ROUNDS = 3;
const PENDING_TARGET = 5_000;
const COMPLETED_TARGET = 200;

/**
 * A backend that answers every call with the same ~1.5 MB PNG, except for prompts starting with "hold",
 * which it never answers (until aborted): the job stays processing and those behind it pending.
 */
function fixedImageBackend(png: Buffer): ImageBackend {
  return {
    id: 'fixed',
    type: 'bench-fixed',
    maxImagesPerCall: 4,
    rerunInterruptedJobs: true,
    async generate(options: BackendCallOptions): Promise<BackendCallResult> {
      if (options.prompt.startsWith('hold')) {
        await new Promise((_resolve, reject) => options.signal.addEventListener('abort', () => reject(options.signal.reason), { once: true }));
      }
      return { images: [png], warnings: [], response: { timestampMs: Date.now(), modelId: options.model } };
    },
    async checkHealth() {},
  };
}

/**
 * Issue #7's scenario 4: how many polls the daemon answers, with autocannon at 50 connections: of a pending
 * job (status, queue position, Retry-After estimate) and of a completed one (the whole result: a ~1.5 MB PNG
 * as base64 in the 0G body, ~2 MB). The baseline, in the same run, is the cheapest route the same server
 * has (GET /healthz): what express, helmet and HTTP cost before any job is read.
 */
export const pollThroughputScenario: BenchScenario = {
  name: 'poll-throughput',
  async run(): Promise<BenchRow[]> {
    const png = await realisticPng();
    const bench = await startBenchDaemon(
      {
        backends: [{ id: 'fixed', type: 'reference', concurrency: 1 }],
        models: [{ id: 'fixed-model', backend: 'fixed', capabilities: ['generation'], sizes: ['1024x1024'] }],
        rateLimits: UNLIMITED_RATES,
      },
      new Map([['fixed', fixedImageBackend(png)]]),
    );
    try {
      const submit = async (prompt: string, sync: boolean): Promise<string> => {
        const res = await request(`${bench.url}/v1/${sync ? '' : 'async/'}images/generations`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'fixed-model', prompt, size: '1024x1024' }),
        });
        const id = res.headers['x-job-id'];
        await res.body.dump();
        if (typeof id !== 'string') throw new Error(`submit answered ${res.statusCode} without X-Job-Id`);
        return id;
      };
      const completed = await submit('done', true);
      await submit('hold the only slot', false);
      const pending = await submit('wait behind it', false);
      for (let i = 0; i < 20; i += 1) await submit(`more behind it ${i}`, false);
      const check = await request(`${bench.url}/v1/async/jobs/${completed}`);
      const completedBytes = (await check.body.arrayBuffer()).byteLength;

      // The machine is shared: the three loads take turns in short rounds, so drift hits them alike.
      const paths = { floor: '/healthz', pending: `/v1/async/jobs/${pending}`, completed: `/v1/async/jobs/${completed}` };
      const load = (path: string, seconds: number) => cannon({ url: `${bench.url}${path}`, connections: CONNECTIONS, duration: seconds });
      for (const path of Object.values(paths)) await load(path, 1);
      const results: Record<keyof typeof paths, CannonResult[]> = { floor: [], pending: [], completed: [] };
      for (let round = 0; round < ROUNDS; round += 1) {
        for (const [name, path] of Object.entries(paths) as Array<[keyof typeof paths, string]>) {
          results[name].push(await load(path, SECONDS / ROUNDS));
        }
      }
      return rows(mergeRounds(results.floor), mergeRounds(results.pending), mergeRounds(results.completed), completedBytes, png.length);
    } finally {
      await bench.close();
    }
  },
};

function rows(floor: CannonResult, pending: CannonResult, completed: CannonResult, bodyBytes: number, pngBytes: number): BenchRow[] {
  const scenario = `polls, ${CONNECTIONS} connections`;
  const failed = (r: CannonResult) => (r.failures > 0 ? `; ${r.failures} failed` : '');
  return [
    { scenario, figure: 'GET /healthz (floor)', value: floor.requestsPerSecond, unit: '/s', target: 'baseline', pass: null, note: `p99 ${floor.latencyP99Ms} ms${failed(floor)}` },
    {
      scenario,
      figure: 'pending job',
      value: pending.requestsPerSecond,
      unit: '/s',
      target: `≥ ${PENDING_TARGET.toLocaleString('en-US')}/s`,
      pass: pending.failures === 0 && pending.requestsPerSecond >= PENDING_TARGET,
      note: `${((pending.requestsPerSecond / floor.requestsPerSecond) * 100).toFixed(0)} % of the floor; p99 ${pending.latencyP99Ms} ms${failed(pending)}`,
    },
    {
      scenario,
      figure: `completed job (${(bodyBytes / 1e6).toFixed(1)} MB body, ${(pngBytes / 1e6).toFixed(1)} MB PNG)`,
      value: completed.requestsPerSecond,
      unit: '/s',
      target: `≥ ${COMPLETED_TARGET}/s`,
      pass: completed.failures === 0 && completed.requestsPerSecond >= COMPLETED_TARGET,
      note: `${((completed.bytesPerSecond * 8) / 1e9).toFixed(2)} Gbit/s; ${((completed.requestsPerSecond / floor.requestsPerSecond) * 100).toFixed(1)} % of the floor; p99 ${completed.latencyP99Ms} ms${failed(completed)}`,
    },
  ];
}
