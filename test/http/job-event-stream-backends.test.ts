import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { startFakeA1111Server, type FakeA1111Server } from '../fakes/a1111-server.js';
import { startFakeComfyUI, type FakeComfyUI } from '../fakes/comfyui-server.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';
import { openSse, type SseEvent } from '../helpers/sse.js';

/**
 * An async job's progress and partial images on its event stream, from the backends that report them:
 * ComfyUI's progress messages and binary preview frames, AUTOMATIC1111's /internal/progress.
 */

const TXT2IMG = fileURLToPath(new URL('../../config/comfyui/txt2img.json', import.meta.url));

let daemon: TestDaemon | undefined;
let comfy: FakeComfyUI | undefined;
let a1111: FakeA1111Server | undefined;
afterEach(async () => {
  await daemon?.close();
  await comfy?.close();
  await a1111?.close();
  daemon = comfy = a1111 = undefined;
});

async function submitAsync(url: string, body: Record<string, unknown>): Promise<string> {
  const res = await fetch(`${url}/v1/async/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as Record<string, any>;
  expect(res.status, JSON.stringify(json)).toBe(202);
  return json.jobId as string;
}

async function allEvents(url: string, jobId: string): Promise<SseEvent[]> {
  const stream = await openSse(`${url}/v1/async/jobs/${jobId}/events`);
  expect(stream.status).toBe(200);
  return stream.rest(20_000);
}

const json = (e: SseEvent) => JSON.parse(e.data) as Record<string, any>;

async function expectPartials(events: SseEvent[], count: number, format: string, width: number) {
  const partials = events.filter((e) => e.event === 'job.partial_image');
  expect(partials.map((e) => json(e).partial_image_index)).toEqual([...Array(count).keys()]);
  for (const partial of partials) {
    expect(partial.id).toBeUndefined();
    const meta = await sharp(Buffer.from(json(partial).b64_json as string, 'base64')).metadata();
    expect(meta).toMatchObject({ format, width });
  }
}

describe('job event streams from real backend protocols', () => {
  it('ComfyUI: progress while running and at most partial_images previews, then the succeeded event', async () => {
    comfy = await startFakeComfyUI();
    // 20 sampler steps over 1.5 s: progress changes for longer than the stream's half-second look.
    comfy.setBehaviour({ runMs: 1_500 });
    daemon = await startTestDaemon({
      config: {
        backends: [
          { id: 'comfy', type: 'comfyui', baseUrl: comfy.url, pollIntervalMs: 50, reconcileIntervalMs: 120_000, workflows: { sd15: TXT2IMG } } as ConfigInput['backends'][number],
        ],
        models: [{ id: 'sd15', backend: 'comfy', capabilities: ['generation'], sizes: ['256x256'] }],
      },
    });
    const jobId = await submitAsync(daemon.url, { model: 'sd15', prompt: 'a lighthouse', size: '256x256', output_format: 'webp', partial_images: 2 });
    const events = await allEvents(daemon.url, jobId);

    expect(comfy.prompts[0]!.extraData).toEqual({ preview_method: 'auto' });
    expect(events.filter((e) => e.id !== undefined).map((e) => e.event)).toEqual(['job.queued', 'job.started', 'job.succeeded']);
    const progress = events.filter((e) => e.event === 'job.progress').map((e) => json(e).percent as number);
    expect(progress.length).toBeGreaterThanOrEqual(1);
    // Sent only on change, so never the same percent twice in a row, and never going back.
    for (let i = 1; i < progress.length; i += 1) expect(progress[i]).toBeGreaterThan(progress[i - 1]!);
    // ComfyUI's previews are latent-sized: 1/8 of the picture.
    await expectPartials(events, 2, 'webp', 32);
    const started = events.findIndex((e) => e.event === 'job.started');
    const firstLive = events.findIndex((e) => e.id === undefined);
    expect(firstLive).toBeGreaterThan(started);
  });

  it('AUTOMATIC1111: live previews from /internal/progress, at most partial_images', async () => {
    a1111 = await startFakeA1111Server();
    a1111.setBehaviour({ stepMs: 50, livePreviewEveryNSteps: 2 });
    daemon = await startTestDaemon({
      config: {
        backends: [{ id: 'sd', type: 'a1111', baseUrl: a1111.url, progressPollMs: 50, steps: 20 } as ConfigInput['backends'][number]],
        models: [{ id: 'sd15', backend: 'sd', capabilities: ['generation'], sizes: ['64x64'] }],
      },
    });
    const jobId = await submitAsync(daemon.url, { model: 'sd15', prompt: 'a fox', size: '64x64', output_format: 'jpeg', partial_images: 3 });
    const events = await allEvents(daemon.url, jobId);
    const reads = a1111.requests.filter((r) => r.path === '/internal/progress').map((r) => r.json as Record<string, unknown>);
    expect(reads.every((b) => b.live_preview === true)).toBe(true);
    const partials = events.filter((e) => e.event === 'job.partial_image');
    expect(partials.length).toBeGreaterThanOrEqual(1);
    expect(partials.length).toBeLessThanOrEqual(3);
    await expectPartials(events, partials.length, 'jpeg', 64);
    expect(events.at(-1)!.event).toBe('job.succeeded');
  });
});
