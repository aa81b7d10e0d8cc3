import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Wallet } from 'ethers';
import OpenAI from 'openai';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/schema.js';
import { DEV_KEY_FILE } from '../../src/tee/dev-key.js';
import { startFakeComfyUI, type FakeComfyUI } from '../fakes/comfyui-server.js';
import { startTestDaemon, tempDir, type TestDaemon } from '../helpers/daemon.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';

/**
 * Partial images travel inside the process that runs the job. Two replicas on one PostgreSQL database in
 * front of one ComfyUI: A takes requests but runs no ComfyUI calls (concurrency 0), B runs them. A stream
 * taken by A gets the completed image only, and B asks ComfyUI for no previews nobody would receive.
 */

const TXT2IMG = fileURLToPath(new URL('../../config/comfyui/txt2img.json', import.meta.url));

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const running: TestDaemon[] = [];
let comfy: FakeComfyUI | undefined;
afterEach(async () => {
  await Promise.all(running.splice(0).map((d) => d.close()));
  await comfy?.close();
  comfy = undefined;
});

async function startReplicas(fake: FakeComfyUI): Promise<{ a: TestDaemon; b: TestDaemon }> {
  const teeKey = Wallet.createRandom().privateKey;
  const start = async (replicaId: string, concurrency: number) => {
    const dataDir = tempDir(`pixeld-${replicaId}-`);
    writeFileSync(path.join(dataDir, DEV_KEY_FILE), `${teeKey}\n`, { mode: 0o600 });
    const config: Partial<ConfigInput> = {
      database: { url: db.url },
      server: { replicaId },
      backends: [
        {
          id: 'comfy',
          type: 'comfyui',
          baseUrl: fake.url,
          concurrency,
          pollIntervalMs: 50,
          reconcileIntervalMs: 120_000,
          workflows: { sd15: TXT2IMG },
        } as ConfigInput['backends'][number],
      ],
      models: [{ id: 'sd15', backend: 'comfy', capabilities: ['generation'], sizes: ['256x256'] }],
    };
    const d = await startTestDaemon({ config, dataDir });
    running.push(d);
    return d;
  };
  return { a: await start('replica-a', 0), b: await start('replica-b', 1) };
}

async function streamTypes(d: TestDaemon): Promise<string[]> {
  const client = new OpenAI({ baseURL: `${d.url}/v1`, apiKey: 'sk-test-dummy', maxRetries: 0, timeout: 20_000 });
  const stream = await client.images.generate({ model: 'sd15', prompt: 'a lighthouse', size: '256x256', stream: true, partial_images: 2 });
  const types: string[] = [];
  for await (const event of stream) types.push(event.type);
  return types;
}

describe('streaming across replicas', () => {
  it('a stream taken by a replica that does not run the job gets the completed event only', async () => {
    comfy = await startFakeComfyUI();
    comfy.setBehaviour({ runMs: 400 });
    const { a, b } = await startReplicas(comfy);

    expect(await streamTypes(a)).toEqual(['image_generation.completed']);
    expect(comfy.prompts).toHaveLength(1);
    expect(comfy.prompts[0]!.extraData).toEqual({});
    expect(comfy.previews).toHaveLength(0);

    // The replica that runs the job streams its previews.
    expect(await streamTypes(b)).toEqual(['image_generation.partial_image', 'image_generation.partial_image', 'image_generation.completed']);
    expect(comfy.prompts[1]!.extraData).toEqual({ preview_method: 'auto' });
  });
});
