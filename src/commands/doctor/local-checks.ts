import { randomBytes } from 'node:crypto';
import { mkdir, rm, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createBackend } from '../../backends/create-backend.js';
import type { ImageBackend, ImageSize } from '../../backends/types.js';
import type { BackendConfig, Config, ModelConfig } from '../../config/schema.js';
import { readSchemaStatus } from '../../jobs/open-stores.js';
import { sniffImageType } from '../../images/sniff.js';
import { silentLogger } from '../../obs/logger.js';
import { formatBytes } from './format.js';
import { describeError, fail, pass, skip, type Check, type CheckOutcome, type DoctorState } from './check.js';

/** The checks that need only this machine: data dir, free space, database schema, each backend. */

export function storageChecks(): Check[] {
  return [
    {
      id: 'data-dir',
      group: 'storage',
      title: 'data dir writable',
      hint: 'make dataDir writable by the user running pixeld, or point dataDir (env PIXELD_DATA_DIR) elsewhere',
      async run(state) {
        const dir = state.config!.dataDir;
        const probe = path.join(dir, `.pixeld-doctor-${randomBytes(6).toString('hex')}`);
        try {
          await mkdir(dir, { recursive: true });
          await writeFile(probe, 'pixeld doctor\n', { flag: 'wx' });
          await rm(probe);
        } catch (err) {
          return fail(`${dir}: ${describeError(err)}`, this.hint);
        }
        return pass(`${dir} (created and removed a file)`);
      },
    },
    {
      id: 'disk-space',
      group: 'storage',
      title: 'free space',
      needs: ['data-dir'],
      hint: 'free space under dataDir, or lower limits.minFreeDiskBytes',
      async run(state) {
        const { dataDir, limits } = state.config!;
        const fs = await statfs(dataDir);
        const free = fs.bavail * fs.bsize;
        const text = `${formatBytes(free)} free under ${dataDir}, limits.minFreeDiskBytes ${formatBytes(limits.minFreeDiskBytes)}`;
        if (free <= limits.minFreeDiskBytes) {
          return fail(`${text}: submits are refused (507 insufficient_storage)`, this.hint);
        }
        return pass(text);
      },
    },
    {
      id: 'database',
      group: 'storage',
      title: 'database schema',
      hint: 'check database.url (env PIXELD_DATABASE_URL) and that the database server is up',
      async run(state) {
        const status = await readSchemaStatus(state.config!);
        const where = `${status.kind === 'postgres' ? 'PostgreSQL' : 'SQLite'} ${status.location}`;
        if (!status.exists) {
          return fail(`${where} does not exist yet`, 'run npx pixeld migrate (or start the daemon, which creates it)');
        }
        if (status.version > status.latest) {
          return fail(
            `${where} is at schema ${status.version}, written by a newer pixeld (this one knows ${status.latest})`,
            'run the pixeld version that wrote it, or restore a backup made for this one',
          );
        }
        if (status.version < status.latest) {
          const pending = status.latest - status.version;
          return fail(
            `${where} is at schema ${status.version}, ${pending} migration${pending === 1 ? '' : 's'} pending (latest ${status.latest})`,
            'run npx pixeld migrate',
          );
        }
        return pass(`${where}, schema ${status.version} (current)`);
      },
    },
  ];
}

export interface BackendCheckOptions {
  /** Ask each backend for a tiny image; false checks reachability only (--no-generation). */
  generation: boolean;
}

/** Two checks per backend: it answers its health probe, then it makes one tiny image. */
export function backendChecks(config: Readonly<Config>, options: BackendCheckOptions): Check[] {
  return config.backends.flatMap((backendConfig) => {
    const model = smallestGenerationModel(config.models, backendConfig.id);
    let backend: ImageBackend | undefined;
    // One adapter for both checks, made as the daemon makes it, and closed when doctor is done.
    const adapter = (state: DoctorState): ImageBackend => {
      if (!backend) {
        const made = createBackend(backendConfig, { logger: silentLogger() });
        backend = made;
        state.cleanups.push(() => made.close?.());
      }
      return backend;
    };
    const where = describeBackend(backendConfig);
    const reach: Check = {
      id: `backend:${backendConfig.id}`,
      group: 'backends',
      title: `backend ${backendConfig.id} reachable`,
      hint: `start the ${backendConfig.type} server${where ? ` at ${where}` : ''}, or fix backends[id=${backendConfig.id}].baseUrl`,
      async run(state, signal) {
        if (backendConfig.concurrency === 0) {
          return skip(`skipped: concurrency 0, another replica runs this backend's jobs`);
        }
        let made: ImageBackend;
        try {
          made = adapter(state);
        } catch (err) {
          return fail(describeError(err), `correct backends[id=${backendConfig.id}]; the daemon refuses this backend at start too`);
        }
        try {
          await made.checkHealth(signal);
        } catch (err) {
          return fail(`${where ? `${where}: ` : ''}${describeError(err)}`, this.hint);
        }
        return pass(`${backendConfig.type}${where ? ` at ${where}` : ''} answers`);
      },
    };
    const generate: Check = {
      id: `generation:${backendConfig.id}`,
      group: 'backends',
      title: `backend ${backendConfig.id} generates`,
      needs: [reach.id],
      timeoutMs: config.jobs.attemptTimeoutMs,
      hint: `see the backend's own log; check backends[id=${backendConfig.id}] and the model's backendModel`,
      async run(state, signal) {
        if (!options.generation) return skip('skipped (--no-generation)');
        if (!model) return skip('skipped: no model with the generation capability uses this backend');
        return tinyGeneration(adapter(state), model, signal, config.jobs.attemptTimeoutMs, this.hint);
      },
    };
    return [reach, generate];
  });
}

/** One image at the model's smallest size, low quality, through the adapter; the bytes must be an image. */
async function tinyGeneration(backend: ImageBackend, model: Tiny, signal: AbortSignal, timeoutMs: number, hint: string): Promise<CheckOutcome> {
  const startedMs = Date.now();
  const result = await backend.generate({
    model: model.config.backendModel ?? model.config.id,
    prompt: 'a small red circle on a white background',
    n: 1,
    size: model.size,
    seed: 1,
    quality: 'low',
    background: 'auto',
    outputFormat: 'png',
    negativePrompt: undefined,
    numInferenceSteps: undefined,
    guidanceScale: undefined,
    images: undefined,
    mask: undefined,
    signal,
    onProgress: () => undefined,
    onPartialImage: undefined,
    deadlineMs: startedMs + timeoutMs,
  });
  const image = result.images[0];
  if (!image) return fail(`model ${model.config.id} at ${model.size}: the backend answered with no image`, hint);
  const type = sniffImageType(image.subarray(0, 16));
  if (!type) return fail(`model ${model.config.id} at ${model.size}: the bytes returned are not png, jpeg or webp`, hint);
  return pass(`model ${model.config.id}, ${model.size}, 1 image (${type}, ${formatBytes(image.byteLength)}) in ${Date.now() - startedMs} ms`);
}

interface Tiny {
  config: ModelConfig;
  size: ImageSize;
}

/** The generation model on this backend with the fewest pixels at its smallest size. */
function smallestGenerationModel(models: readonly ModelConfig[], backendId: string): Tiny | undefined {
  let best: (Tiny & { pixels: number }) | undefined;
  for (const m of models) {
    if (m.backend !== backendId || !m.capabilities.includes('generation')) continue;
    for (const size of m.sizes) {
      const [w, h] = size.split('x').map(Number) as [number, number];
      if (!best || w * h < best.pixels) best = { config: m, size: size as ImageSize, pixels: w * h };
    }
  }
  return best && { config: best.config, size: best.size };
}

function describeBackend(config: BackendConfig): string {
  return 'baseUrl' in config ? config.baseUrl : '';
}
