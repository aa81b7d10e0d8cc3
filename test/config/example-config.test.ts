import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { z } from 'zod';
import { describe, expect, it } from 'vitest';
import { createBackend } from '../../src/backends/create-backend.js';
import { loadConfig } from '../../src/config/load.js';
import { silentLogger } from '../../src/obs/logger.js';
import { backendSchema, configSchema, modelSchema } from '../../src/config/schema.js';

/**
 * config/pixeld.example.yaml is the operator's reference for every key. These tests keep it honest:
 * it must load, every schema key must appear in it, and the values it calls defaults must be the defaults.
 */

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const EXAMPLE = path.join(REPO, 'config', 'pixeld.example.yaml');

function loadExample() {
  // An empty env: PORT, HOST, PIXELD_* of whoever runs the tests must not change what is checked.
  return loadConfig({ configPath: EXAMPLE, env: {}, cwd: REPO });
}

/** Every key name the schema accepts, as dotted paths (array elements and union options flattened). */
function schemaKeys(schema: z.core.$ZodType, prefix = ''): string[] {
  const def = schema._zod.def as unknown as {
    type: string;
    shape?: Record<string, z.core.$ZodType>;
    innerType?: z.core.$ZodType;
    element?: z.core.$ZodType;
    options?: z.core.$ZodType[];
    in?: z.core.$ZodType;
  };
  switch (def.type) {
    case 'object':
      return Object.entries(def.shape!).flatMap(([key, child]) => [`${prefix}${key}`, ...schemaKeys(child, `${prefix}${key}.`)]);
    case 'array':
      return schemaKeys(def.element!, prefix);
    case 'union':
      return [...new Set(def.options!.flatMap((option) => schemaKeys(option, prefix)))];
    case 'default':
    case 'prefault':
    case 'optional':
    case 'nullable':
      return schemaKeys(def.innerType!, prefix);
    case 'pipe':
      return schemaKeys(def.in!, prefix);
    default:
      return [];
  }
}

describe('config/pixeld.example.yaml', () => {
  it('loads with loadConfig, including an openai (SGLang) backend and a model on it', () => {
    const { config, source } = loadExample();
    expect(source).toBe(EXAMPLE);
    expect(Object.isFrozen(config)).toBe(true);

    const sglang = config.backends.find((b) => b.id === 'sglang');
    expect(sglang).toMatchObject({ type: 'openai', baseUrl: 'http://127.0.0.1:30000/v1' });
    const onSglang = config.models.filter((m) => m.backend === 'sglang');
    expect(onSglang.map((m) => m.id)).toEqual(['qwen-image']);
    expect(onSglang[0]!.backendModel).toBe('Qwen/Qwen-Image');
    expect(onSglang[0]!.pricePerImageWei).toBe(10n ** 15n);
    expect(config.models.map((m) => m.id)).toContain('reference-image-1');
  });

  it('has a working example of every backend type, each with a model on it', async () => {
    const { config } = loadExample();
    const types = backendSchema.options.map((o) => o.shape.type.value);
    expect(new Set(config.backends.map((b) => b.type))).toEqual(new Set(types));
    for (const b of config.backends) expect(config.models.some((m) => m.backend === b.id)).toBe(true);
    // Each one is a backend the daemon can build (ComfyUI's workflows are read and checked here).
    const backends = config.backends.map((b) => createBackend(b, { logger: silentLogger() }));
    expect(backends.map((b) => b.type).sort()).toEqual([...types].sort());
    await Promise.all(backends.map((b) => b.close?.()));
  });

  it('mentions every key of the schema', () => {
    const text = readFileSync(EXAMPLE, 'utf8');
    const keys = schemaKeys(configSchema);
    // Sanity: the walker found the nested keys, not just the top level.
    expect(keys).toEqual(expect.arrayContaining(['server.requestTimeoutMs', 'jobs.idempotencyTtlMs', 'backends.latencyMsPerImage', 'backends.healthPath', 'models.extensions']));
    const missing = keys.filter((key) => {
      const name = key.split('.').at(-1)!;
      // `key:` at the start of a line, possibly commented out and/or as a list item.
      return !new RegExp(`^[ \\t]*(?:#[ \\t]*)?(?:-[ \\t]*)?${name}:`, 'm').test(text);
    });
    expect(missing).toEqual([]);
  });

  it('shows the real defaults in every section that says so', () => {
    const { config } = loadExample();
    const defaults = configSchema.parse({ backends: [{ id: 'b', type: 'reference' }], models: [{ id: 'm', backend: 'b', capabilities: ['generation'], sizes: ['256x256'] }] });
    expect(config.server).toEqual(defaults.server);
    expect(config.store).toEqual(defaults.store);
    expect(config.database).toEqual(defaults.database);
    expect(config.auth).toEqual(defaults.auth);
    expect(config.admin).toEqual(defaults.admin);
    expect(config.metrics).toEqual(defaults.metrics);
    expect(config.log).toEqual(defaults.log);
    expect(config.tee).toEqual(defaults.tee);
    expect(config.provider).toEqual(defaults.provider);
    expect(config.chain).toEqual(defaults.chain);
    expect(config.rateLimits).toEqual(defaults.rateLimits);
    expect(config.billing).toEqual(defaults.billing);
    expect(config.limits).toEqual(defaults.limits);
    expect(config.jobs).toEqual(defaults.jobs);
    expect(config.webhooks).toEqual(defaults.webhooks);
    expect(config.dataDir).toBe(path.resolve(REPO, defaults.dataDir));
  });

  it('differs from the defaults in backends and models only where it says so', () => {
    const { config } = loadExample();
    const backend = (id: string) => config.backends.find((b) => b.id === id);
    const model = (id: string) => config.models.find((m) => m.id === id);

    expect(backend('reference')).toEqual({
      ...backendSchema.parse({ id: 'reference', type: 'reference' }),
      concurrency: 2,
      latencyMsPerImage: 200,
    });
    expect(backend('sglang')).toEqual({
      ...backendSchema.parse({ id: 'sglang', type: 'openai', baseUrl: 'http://127.0.0.1:30000/v1' }),
      flavor: 'sglang',
      maxImagesPerCall: 1,
      apiKeyEnv: 'SGLANG_API_KEY',
    });
    expect(backend('comfy')).toEqual(
      backendSchema.parse({
        id: 'comfy',
        type: 'comfyui',
        baseUrl: 'http://127.0.0.1:8188',
        workflows: { sd15: 'config/comfyui/txt2img.json', 'sd15-inpaint': 'config/comfyui/inpaint.json' },
      }),
    );
    expect(backend('forge')).toEqual(backendSchema.parse({ id: 'forge', type: 'a1111', baseUrl: 'http://127.0.0.1:7860' }));
    expect(backend('hosted')).toEqual({
      ...backendSchema.parse({ id: 'hosted', type: 'siliconflow', baseUrl: 'https://api.siliconflow.cn/v1' }),
      apiKeyEnv: 'SILICONFLOW_API_KEY',
    });
    expect(model('reference-image-1')).toEqual({
      ...modelSchema.parse({
        id: 'reference-image-1',
        backend: 'reference',
        capabilities: ['generation', 'edit'],
        sizes: ['256x256', '512x512', '1024x1024', '1024x1536', '1536x1024'],
      }),
      defaultSize: '1024x1024',
      description: 'Built-in reference renderer (no GPU) for smoke tests and demos',
    });
    expect(model('qwen-image')).toEqual({
      ...modelSchema.parse({
        id: 'qwen-image',
        backend: 'sglang',
        capabilities: ['generation'],
        sizes: ['1328x1328', '1664x928', '928x1664', '1472x1140', '1140x1472'],
      }),
      backendModel: 'Qwen/Qwen-Image',
      defaultSize: '1328x1328',
      pricePerImageWei: 10n ** 15n,
      extensions: ['seed', 'negative_prompt', 'num_inference_steps', 'guidance_scale'],
      description: 'Qwen-Image on SGLang diffusion (one GPU)',
    });
  });

  it('is what the daemon runs with: environment overrides still apply on top of it', () => {
    const { config } = loadConfig({
      configPath: EXAMPLE,
      env: { PORT: '9090', HOST: '0.0.0.0', PIXELD_DATA_DIR: '/srv/pixeld', PIXELD_LOG_LEVEL: 'debug' },
      cwd: REPO,
    });
    expect(config.server.port).toBe(9090);
    expect(config.server.host).toBe('0.0.0.0');
    expect(config.dataDir).toBe('/srv/pixeld');
    expect(config.log.level).toBe('debug');
  });
});
