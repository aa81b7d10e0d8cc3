import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { pipeline } from 'node:stream/promises';
import { Agent, request, type Dispatcher } from 'undici';
import { createOpenAIBackend, toGenerationBody } from '../../src/backends/openai.js';
import { serverHabits } from '../../src/backends/openai-flavors.js';
import { openaiBackendSchema } from '../../src/config/schema.js';
import { encodeBase64 } from '../../src/images/base64.js';
import { FileBlobStore } from '../../src/images/file-blob-store.js';
import { normalizeOutputImage } from '../../src/images/normalize-output.js';
import { silentLogger } from '../../src/obs/logger.js';
import { backendCallOptions } from '../../test/helpers/backend-call.js';
import { cannon, mergeRounds, startChildDaemon, startFakeBackendProcess, UNLIMITED_RATES, type CannonResult } from '../harness.js';
import { percentile, type BenchRow, type BenchScenario } from '../table.js';

const CONNECTIONS = 8;
const WARM_UP_SECONDS = 2;
const ROUNDS = 3;
const SECONDS = 12;
/** One request at a time: what the daemon adds to a request when nothing queues. */
const UNLOADED_SECONDS = 5;
const P50_TARGET_MS = 15;
const P99_TARGET_MS = 40;
const MODEL = 'fake-image-model';
/** The same request for all three paths; the fixed seed lets the fake serve its cached picture. */
const BODY = JSON.stringify({ model: MODEL, prompt: 'a lighthouse at dusk', size: '1024x1024', seed: 7, response_format: 'b64_json' });

/**
 * Issue #7's scenario 3: what the daemon adds to a sync generation. The same request goes straight to the
 * fake OpenAI-compatible backend (its own process; a real noisy 1024² PNG, ~2.6 MB, as b64), through a
 * minimal undici pass-through proxy (the floor: one more HTTP hop and nothing else), and through the
 * daemon in its own process as `npm start` runs it (job row, runner, adapter, output check, hash, sign, store,
 * response) — at concurrency 8, and one at a time.
 */
export const syncOverheadScenario: BenchScenario = {
  name: 'sync-overhead',
  async run(): Promise<BenchRow[]> {
    const fake = await startFakeBackendProcess();
    const proxy = await startPassThroughProxy(fake.origin);
    const bench = await startChildDaemon({
      backends: [{ id: 'fake', type: 'openai', baseUrl: fake.url, concurrency: CONNECTIONS, maxQueuedJobs: 1_000 }],
      models: [{ id: MODEL, backend: 'fake', capabilities: ['generation'], sizes: ['1024x1024'], maxInFlight: 1_000 }],
      rateLimits: UNLIMITED_RATES,
    });
    try {
      const paths = {
        direct: `${fake.origin}/v1/images/generations`,
        proxy: `${proxy.url}/v1/images/generations`,
        daemon: `${bench.url}/v1/images/generations`,
      };
      type Path = keyof typeof paths;
      const load = (url: string, connections: number, seconds: number) =>
        cannon({ url, method: 'POST', headers: { 'content-type': 'application/json' }, body: BODY, connections, duration: seconds });
      for (const url of Object.values(paths)) await load(url, CONNECTIONS, WARM_UP_SECONDS);
      const measure = async (connections: number, rounds: number, seconds: number) => {
        // Shared, noisy machine: the three paths take turns in short rounds, so drift hits them alike.
        const results: Record<Path, CannonResult[]> = { direct: [], proxy: [], daemon: [] };
        for (let round = 0; round < rounds; round += 1) {
          for (const [name, url] of Object.entries(paths) as Array<[Path, string]>) results[name].push(await load(url, connections, seconds / rounds));
        }
        return { direct: mergeRounds(results.direct), proxy: mergeRounds(results.proxy), daemon: mergeRounds(results.daemon) };
      };
      const loaded = await measure(CONNECTIONS, ROUNDS, SECONDS);
      const alone = await measure(1, 1, UNLOADED_SECONDS);
      const parts = await stages(fake.url, fake.origin);
      return [...rows(CONNECTIONS, loaded, true, parts), ...rows(1, alone, false, parts), ...stageRows(parts)];
    } finally {
      await bench.stop();
      await proxy.close();
      await fake.stop();
    }
  },
};

interface Measured {
  direct: CannonResult;
  proxy: CannonResult;
  daemon: CannonResult;
}

function rows(connections: number, { direct, proxy, daemon }: Measured, judged: boolean, parts: Stages): BenchRow[] {
  const scenario = `sync generation, 1024² PNG as b64, concurrency ${connections}`;
  const added = (r: CannonResult, p: 'latencyP50Ms' | 'latencyP99Ms') => r[p] - direct[p];
  const failures = direct.failures + proxy.failures + daemon.failures;
  const failureNote = failures > 0 ? `; ${failures} failed requests (direct ${direct.failures}, proxy ${proxy.failures}, daemon ${daemon.failures})` : '';
  const p50 = added(daemon, 'latencyP50Ms');
  const p99 = added(daemon, 'latencyP99Ms');
  const rate = (r: CannonResult) => `${r.requestsPerSecond.toFixed(1)} req/s`;
  const out: BenchRow[] = [
    { scenario, figure: 'direct to the backend, p50', value: direct.latencyP50Ms, unit: 'ms', target: 'baseline', pass: null, note: `p99 ${direct.latencyP99Ms} ms, ${rate(direct)}` },
    { scenario, figure: 'pass-through proxy adds, p50', value: added(proxy, 'latencyP50Ms'), unit: 'ms', target: 'floor', pass: null, note: `p99 +${added(proxy, 'latencyP99Ms')} ms, ${rate(proxy)}` },
    {
      scenario,
      figure: 'daemon adds, p50',
      value: p50,
      unit: 'ms',
      target: judged ? `≤ ${P50_TARGET_MS} ms` : 'info',
      pass: judged ? failures === 0 && p50 <= P50_TARGET_MS : null,
      note:
        `${rate(daemon)} (direct ${rate(direct)})${failureNote}` +
        (judged && p50 > P50_TARGET_MS
          ? `. The limit is CPU: one request alone costs the daemon reading and decoding the backend's 3.5 MB answer ` +
            `(+${parts.adapterMs.toFixed(1)} ms over a bare request), the output check (${parts.decodeMs.toFixed(1)} ms), hashing, ` +
            `two signatures, storing and base64-encoding the answer, and V8's collections of the megabytes each request allocates; ` +
            `at concurrency 8 the 2 cores, shared with the fake backend and autocannon, run out and requests queue`
          : ''),
    },
    {
      scenario,
      figure: 'daemon adds, p99',
      value: p99,
      unit: 'ms',
      target: judged ? `≤ ${P99_TARGET_MS} ms` : 'info',
      pass: judged ? failures === 0 && p99 <= P99_TARGET_MS : null,
    },
    { scenario, figure: 'daemon overhead ÷ proxy overhead, p50', value: p50 / Math.max(1, added(proxy, 'latencyP50Ms')), unit: '×', target: 'info', pass: null },
  ];
  return out;
}

interface Stages {
  /** p50 of the openai adapter's generate() minus p50 of the same call made with a bare undici request. */
  adapterMs: number;
  /** p50 of the output check (sniff, container walk with CRCs, header) on the fake's PNG, as the format already matches. */
  decodeMs: number;
  /** p50 of hashing and writing the PNG into the blob store. */
  storeMs: number;
  /** p50 of base64-encoding the PNG for the answer. */
  encodeMs: number;
  reencoded: boolean;
  pngBytes: number;
}

/** Stages of the daemon's path timed on their own, one call at a time, to say where the time goes. */
async function stages(baseUrl: string, origin: string): Promise<Stages> {
  const config = openaiBackendSchema.parse({ id: 'fake', type: 'openai', baseUrl });
  const adapter = createOpenAIBackend(config, { logger: silentLogger() });
  const options = backendCallOptions({ model: MODEL, size: '1024x1024', seed: 7, deadlineMs: Date.now() + 600_000 });
  const body = JSON.stringify(toGenerationBody(options, serverHabits(config)));
  const bare = async () => {
    const res = await request(`${origin}/v1/images/generations`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    await res.body.arrayBuffer();
  };
  let png: Uint8Array = new Uint8Array();
  const viaAdapter = async () => {
    png = (await adapter.generate(options)).images[0]!;
  };
  let reencoded = false;
  const check = async () => {
    reencoded = (await normalizeOutputImage(png, { outputFormat: 'png', outputCompression: undefined, background: 'auto', maxPixels: 160_000_000 })).reencoded;
  };
  const dataDir = mkdtempSync(path.join(tmpdir(), 'pixeld-bench-stages-'));
  const blobs = new FileBlobStore(dataDir, 0);
  await blobs.init();
  const store = async () => {
    await blobs.putBuffer(png);
  };
  const encode = async () => {
    encodeBase64(png);
  };
  try {
    const bareMs = await medianMs(bare);
    const adapterMs = await medianMs(viaAdapter);
    return {
      adapterMs: adapterMs - bareMs,
      decodeMs: await medianMs(check),
      storeMs: await medianMs(store),
      encodeMs: await medianMs(encode),
      reencoded,
      pngBytes: png.byteLength,
    };
  } finally {
    await adapter.close?.();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

async function medianMs(f: () => Promise<void>, times = 15): Promise<number> {
  for (let i = 0; i < 3; i += 1) await f();
  const samples: number[] = [];
  for (let i = 0; i < times; i += 1) {
    const started = performance.now();
    await f();
    samples.push(performance.now() - started);
  }
  return percentile(samples.sort((a, b) => a - b), 50);
}

function stageRows(parts: Stages): BenchRow[] {
  const scenario = `sync generation: where a request's time goes (one at a time, ${(parts.pngBytes / 1e6).toFixed(1)} MB PNG)`;
  const row = (figure: string, value: number, note: string): BenchRow => ({ scenario, figure, value, unit: 'ms', target: 'info', pass: null, note });
  return [
    row('openai adapter over a bare request, p50', parts.adapterMs, 'reading a 3.5 MB body, parsing the JSON around the base64 and decoding it (src/backends/openai.ts, base64-json.ts)'),
    row(
      'output check (container, CRCs, header), p50',
      parts.decodeMs,
      parts.reencoded ? 'RE-ENCODED although the format matched' : 'not re-encoded: the format matched, bytes delivered as received',
    ),
    row('store (sha256 + write), p50', parts.storeMs, 'src/images/file-blob-store.ts'),
    row('base64 of the answer, p50', parts.encodeMs, 'src/images/base64.ts'),
    row(
      'these stages together',
      parts.adapterMs + parts.decodeMs + parts.storeMs + parts.encodeMs,
      'plus signing (see sign+hash below), the job row, the HTTP exchange and garbage collection: the work itself, before any queueing',
    ),
  ];
}

/** The floor: forwards the request to the backend with undici and streams the answer back, nothing else. */
async function startPassThroughProxy(origin: string): Promise<{ url: string; close(): Promise<void> }> {
  const agent = new Agent({ connections: 64, keepAliveTimeout: 60_000 });
  const server = createServer((req, res) => {
    const headers: Record<string, string> = { 'content-type': req.headers['content-type'] ?? 'application/octet-stream' };
    if (req.headers['content-length'] !== undefined) headers['content-length'] = req.headers['content-length'];
    request(`${origin}${req.url ?? '/'}`, { dispatcher: agent, method: (req.method ?? 'GET') as Dispatcher.HttpMethod, headers, body: req })
      .then(async (upstream) => {
        const out: Record<string, string> = {};
        for (const name of ['content-type', 'content-length']) {
          const value = upstream.headers[name];
          if (typeof value === 'string') out[name] = value;
        }
        res.writeHead(upstream.statusCode, out);
        await pipeline(upstream.body, res);
      })
      .catch(() => {
        if (!res.headersSent) res.writeHead(502);
        res.end();
      });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await agent.close();
    },
  };
}
