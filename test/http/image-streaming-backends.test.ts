import { fileURLToPath } from 'node:url';
import OpenAI, { toFile } from 'openai';
import type { ImageGenerateParamsStreaming } from 'openai/resources/images';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { toTaskState } from '../../src/backends/a1111.js';
import { previewImageOf } from '../../src/backends/comfyui.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { startFakeA1111Server, type FakeA1111Server } from '../fakes/a1111-server.js';
import { fakeSampleColour, startFakeComfyUI, type FakeComfyUI, type PreviewMethod } from '../fakes/comfyui-server.js';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.js';

/**
 * Partial images from the backends that render previews: ComfyUI's binary preview frames on its websocket
 * and AUTOMATIC1111's live previews in /internal/progress, streamed through the daemon to the openai client.
 */

const TXT2IMG = fileURLToPath(new URL('../../config/comfyui/txt2img.json', import.meta.url));
const INPAINT = fileURLToPath(new URL('../../config/comfyui/inpaint.json', import.meta.url));

let daemon: TestDaemon | undefined;
let comfy: FakeComfyUI | undefined;
let a1111: FakeA1111Server | undefined;
afterEach(async () => {
  await daemon?.close();
  await comfy?.close();
  await a1111?.close();
  daemon = undefined;
  comfy = undefined;
  a1111 = undefined;
});

function clientOf(d: TestDaemon): OpenAI {
  return new OpenAI({ baseURL: `${d.url}/v1`, apiKey: 'sk-test-dummy', maxRetries: 0, timeout: 20_000 });
}

async function startComfy(previewMethod?: PreviewMethod) {
  comfy = await startFakeComfyUI({ previewMethod });
  // 20 steps of 30 ms: a preview frame per step, and time for the daemon to take them in.
  comfy.setBehaviour({ runMs: 600 });
  daemon = await startTestDaemon({
    config: {
      backends: [
        {
          id: 'comfy',
          type: 'comfyui',
          baseUrl: comfy.url,
          pollIntervalMs: 50,
          reconcileIntervalMs: 120_000,
          workflows: { sd15: TXT2IMG, 'sd15-inpaint': INPAINT },
        } as ConfigInput['backends'][number],
      ],
      models: [
        { id: 'sd15', backend: 'comfy', capabilities: ['generation'], sizes: ['256x256'], extensions: ['seed'] },
        { id: 'sd15-inpaint', backend: 'comfy', capabilities: ['edit'], sizes: ['256x256'], extensions: ['seed'] },
      ],
    },
  });
  return { fake: comfy, d: daemon, client: clientOf(daemon) };
}

async function startA1111() {
  a1111 = await startFakeA1111Server();
  // 20 steps of 30 ms, a live preview every 2 steps, progress read every 50 ms.
  a1111.setBehaviour({ stepMs: 30, livePreviewEveryNSteps: 2 });
  daemon = await startTestDaemon({
    config: {
      backends: [{ id: 'sd', type: 'a1111', baseUrl: a1111.url, progressPollMs: 50, steps: 20 } as ConfigInput['backends'][number]],
      models: [{ id: 'sd15', backend: 'sd', capabilities: ['generation', 'edit'], sizes: ['64x64', '128x128'] }],
    },
  });
  return { fake: a1111, d: daemon, client: clientOf(daemon) };
}

async function decoded(b64: string) {
  const bytes = Buffer.from(b64, 'base64');
  const meta = await sharp(bytes).metadata();
  const { data } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { meta, firstPixel: [data[0]!, data[1]!, data[2]!] };
}

describe('partial images from ComfyUI', () => {
  it('asks for previews only for a streamed job, and streams at most partial_images of them, converted to the requested format', async () => {
    const { fake, client } = await startComfy();
    // Not streamed: no preview method asked for, so the server's own (none) renders no frames.
    await client.images.generate({ model: 'sd15', prompt: 'plain', size: '256x256' });
    expect(fake.prompts[0]!.extraData).toEqual({});
    expect(fake.previews).toHaveLength(0);

    // The seed extension is not in the SDK's types; the SDK sends the fields it is given.
    const params: ImageGenerateParamsStreaming & { seed: number } = {
      model: 'sd15',
      prompt: 'a lighthouse',
      size: '256x256',
      seed: 42,
      output_format: 'webp',
      stream: true,
      partial_images: 2,
    };
    const stream = await client.images.generate(params);
    const events = [];
    for await (const event of stream) events.push(event);
    const streamed = fake.prompts[1]!;
    expect(streamed.extraData).toEqual({ preview_method: 'auto' });
    // The fake sent a frame per sampler step; two of them were wanted.
    expect(fake.previews.filter((p) => p.promptId === streamed.id).length).toBe(20);
    expect(events.map((e) => e.type)).toEqual([
      'image_generation.partial_image',
      'image_generation.partial_image',
      'image_generation.completed',
    ]);
    const partials = events.filter((e) => e.type === 'image_generation.partial_image');
    expect(partials.map((e) => e.partial_image_index)).toEqual([0, 1]);
    const final = fakeSampleColour(42);
    let previousDistance = Infinity;
    for (const partial of partials) {
      expect(partial).toMatchObject({ size: '256x256', output_format: 'webp' });
      const { meta, firstPixel } = await decoded(partial.b64_json);
      // ComfyUI's previews are latent-sized: 1/8 of the picture.
      expect(meta).toMatchObject({ format: 'webp', width: 32, height: 32 });
      // Later previews are nearer the final picture (the fake fades in the seed's colour step by step).
      const distance = firstPixel.reduce((sum, c, i) => sum + Math.abs(c - final[i]!), 0);
      expect(distance).toBeLessThan(previousDistance);
      previousDistance = distance;
    }
    const completed = events.at(-1)!;
    const image = await decoded(completed.b64_json);
    expect(image.meta).toMatchObject({ format: 'webp', width: 256, height: 256 });
  });

  it('streams an edit with previews (image_edit events)', async () => {
    const { client } = await startComfy();
    const input = await sharp({ create: { width: 256, height: 256, channels: 3, background: '#c81414' } }).png().toBuffer();
    const stream = await client.images.edit({
      model: 'sd15-inpaint',
      prompt: 'winter',
      image: await toFile(input, 'in.png', { type: 'image/png' }),
      size: '256x256',
      stream: true,
      partial_images: 1,
    });
    const types = [];
    for await (const event of stream) types.push(event.type);
    expect(types).toEqual(['image_edit.partial_image', 'image_edit.completed']);
  });

  it('reads only PREVIEW_IMAGE binary messages (JPEG or PNG), never other binary events', () => {
    const message = (event: number, type: number, body: number[]) => {
      const bytes = new Uint8Array(8 + body.length);
      const view = new DataView(bytes.buffer);
      view.setUint32(0, event);
      view.setUint32(4, type);
      bytes.set(body, 8);
      return bytes;
    };
    expect(previewImageOf(message(1, 1, [0xff, 0xd8, 0xff]))).toEqual(new Uint8Array([0xff, 0xd8, 0xff]));
    expect(previewImageOf(message(1, 2, [0x89, 0x50]))).toEqual(new Uint8Array([0x89, 0x50]));
    // UNENCODED_PREVIEW_IMAGE (2), TEXT (3), an unknown image type, a message with no image.
    expect(previewImageOf(message(2, 1, [1, 2]))).toBeUndefined();
    expect(previewImageOf(message(3, 1, [1, 2]))).toBeUndefined();
    expect(previewImageOf(message(1, 7, [1, 2]))).toBeUndefined();
    expect(previewImageOf(message(1, 1, []))).toBeUndefined();
  });
});

describe('partial images from AUTOMATIC1111', () => {
  it('asks /internal/progress for live previews only when streamed, and streams at most partial_images of them', async () => {
    const { fake, client } = await startA1111();
    await client.images.generate({ model: 'sd15', prompt: 'plain', size: '64x64' });
    const progressBodies = () => fake.requests.filter((r) => r.path === '/internal/progress').map((r) => r.json as Record<string, unknown>);
    expect(progressBodies().length).toBeGreaterThan(0);
    expect(progressBodies().every((b) => b.live_preview === false)).toBe(true);
    const plainReads = progressBodies().length;

    const stream = await client.images.generate({ model: 'sd15', prompt: 'a fox', size: '64x64', output_format: 'jpeg', stream: true, partial_images: 3 });
    const events = [];
    for await (const event of stream) events.push(event);
    const streamedReads = progressBodies().slice(plainReads);
    expect(streamedReads.every((b) => b.live_preview === true)).toBe(true);
    // Each read asks past the last preview taken: the first from -1, later ones from a number A1111 gave.
    expect(streamedReads[0]!.id_live_preview).toBe(-1);
    expect(new Set(streamedReads.map((b) => b.id_live_preview)).size).toBeGreaterThan(1);

    const partials = events.filter((e) => e.type === 'image_generation.partial_image');
    expect(partials.length).toBeGreaterThanOrEqual(1);
    expect(partials.length).toBeLessThanOrEqual(3);
    expect(partials.map((e) => e.partial_image_index)).toEqual(partials.map((_, i) => i));
    for (const partial of partials) {
      const { meta } = await decoded(partial.b64_json);
      expect(meta).toMatchObject({ format: 'jpeg', width: 64, height: 64 });
    }
    expect(events.at(-1)!.type).toBe('image_generation.completed');
    expect(events.slice(0, -1).every((e) => e.type === 'image_generation.partial_image')).toBe(true);
  });

  it('reads a live preview from a progress answer only with its number', () => {
    const png = 'iVBORw0KGgo=';
    expect(toTaskState({ active: true, progress: 0.5, live_preview: `data:image/png;base64,${png}`, id_live_preview: 3 })).toEqual({
      kind: 'active',
      progress: 0.5,
      livePreview: { id: 3, image: Buffer.from(png, 'base64') },
    });
    expect(toTaskState({ active: true, progress: 0.5, live_preview: null, id_live_preview: 3 })).toEqual({ kind: 'active', progress: 0.5 });
    expect(toTaskState({ active: true, progress: 0.5, live_preview: `data:image/png;base64,${png}` })).toEqual({ kind: 'active', progress: 0.5 });
  });
});
