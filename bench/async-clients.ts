import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import { Agent, request } from 'undici';

/**
 * The polling clients of bench/async-load.ts, run in a worker thread: real clients are on other machines,
 * and their HTTP work must not be done on the event loop of the daemon being measured. Times are
 * absolute (performance.timeOrigin + now), comparable with the main thread's.
 */

export interface ClientsInput {
  url: string;
  mode: 'retry-after' | 'retry-after-ms' | 'long-poll';
  jobs: number;
  clients: number;
  size: string;
  longPollSeconds: number;
}

export interface ClientsOutput {
  startedAt: number;
  endedAt: number;
  /** prompt → when the client held the completed body. */
  gotResult: Array<[string, number]>;
  polls: number;
  completed: number;
  failures: string[];
}

const now = () => performance.timeOrigin + performance.now();

async function runClients(input: ClientsInput): Promise<ClientsOutput> {
  const { url, mode, jobs } = input;
  const agent = new Agent({ connections: input.clients * 2, keepAliveTimeout: 60_000 });
  const gotResult: Array<[string, number]> = [];
  const failures: string[] = [];
  let polls = 0;
  let next = 0;
  let completed = 0;

  const get = async (path: string): Promise<{ status: number; waitMs: number; body: Record<string, unknown> }> => {
    const res = await request(`${url}${path}`, { dispatcher: agent });
    const body = (await res.body.json()) as Record<string, unknown>;
    const seconds = Number(res.headers['retry-after']);
    const ms = Number(res.headers['retry-after-ms']);
    const waitMs = mode === 'retry-after-ms' && ms > 0 ? ms : seconds * 1000;
    return { status: res.statusCode, waitMs, body };
  };

  const client = async (): Promise<void> => {
    while (next < jobs) {
      const index = next++;
      const prompt = `bench ${mode} job ${index}`;
      const submitted = await request(`${url}/v1/async/images/generations`, {
        dispatcher: agent,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'ref-model', prompt, size: input.size }),
      });
      const { jobId } = (await submitted.body.json()) as { jobId?: string };
      if (submitted.statusCode !== 202 || jobId === undefined) {
        failures.push(`submit answered ${submitted.statusCode}`);
        continue;
      }
      const path = `/v1/async/jobs/${jobId}${mode === 'long-poll' ? `?wait=${input.longPollSeconds}` : ''}`;
      for (;;) {
        const poll = await get(path);
        polls += 1;
        const status = poll.body.status;
        if (status === 'completed') {
          gotResult.push([prompt, now()]);
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

  const startedAt = now();
  try {
    await Promise.all(Array.from({ length: input.clients }, client));
  } finally {
    await agent.close();
  }
  return { startedAt, endedAt: now(), gotResult, polls, completed, failures };
}

if (parentPort) {
  const port = parentPort;
  runClients(workerData as ClientsInput).then(
    (output) => port.postMessage({ output }),
    (err: unknown) => port.postMessage({ error: String((err as Error)?.stack ?? err) }),
  );
}
