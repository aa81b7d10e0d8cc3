import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  buildPrompt,
  createComfyUIBackend,
  describeExecutionError,
  describePromptError,
  loadWorkflows,
  MASK_CHANNEL,
  parseWorkflow,
  planCall,
  promptOutcome,
  queuePosition,
  readHistoryEntry,
  toComfyMask,
  WorkflowCallError,
  WorkflowError,
  type ApiWorkflow,
} from '../../src/backends/comfyui.js';
import { BackendError } from '../../src/backends/errors.js';
import type { ImageBackend, InputImage } from '../../src/backends/types.js';
import { ConfigError } from '../../src/config/load.js';
import { comfyuiBackendSchema } from '../../src/config/schema.js';
import { silentLogger } from '../../src/obs/logger.js';
import { fakeSampleColour, startFakeComfyUI, validatePrompt, type FakeComfyUI } from '../fakes/comfyui-server.js';
import { backendCallOptions } from '../helpers/backend-call.js';

const TXT2IMG = fileURLToPath(new URL('../../config/comfyui/txt2img.json', import.meta.url));
const INPAINT = fileURLToPath(new URL('../../config/comfyui/inpaint.json', import.meta.url));
const readJson = (file: string): ApiWorkflow => JSON.parse(readFileSync(file, 'utf8')) as ApiWorkflow;

/** The shipped text-to-image workflow with a change applied, for error cases. */
function txt2img(change: (wf: ApiWorkflow) => void = () => undefined): ApiWorkflow {
  const wf = readJson(TXT2IMG);
  change(wf);
  return wf;
}

function parseError(json: unknown): string {
  try {
    parseWorkflow(json, '/wf/test.json');
  } catch (err) {
    expect(err).toBeInstanceOf(WorkflowError);
    return (err as Error).message;
  }
  throw new Error('expected parseWorkflow to fail');
}

const image = (width = 64, height = 64, name = 'a'): InputImage => ({
  path: `/nonexistent/${name}.png`,
  mediaType: 'image/png',
  width,
  height,
  sha256: name.repeat(64).slice(0, 64),
});

describe('parseWorkflow', () => {
  it('finds every marker of the shipped text-to-image workflow', () => {
    const wf = parseWorkflow(readJson(TXT2IMG), TXT2IMG);
    expect(wf.prompt).toEqual([{ nodeId: '6', inputs: ['text'] }]);
    expect(wf.negativePrompt).toEqual([{ nodeId: '7', inputs: ['text'] }]);
    expect(wf.seed).toEqual([{ nodeId: '3', inputs: ['seed'] }]);
    expect(wf.steps).toEqual([{ nodeId: '3', inputs: ['steps'] }]);
    expect(wf.cfg).toEqual([{ nodeId: '3', inputs: ['cfg'] }]);
    expect(wf.size).toEqual(['5']);
    expect(wf.batchSize).toEqual([]);
    expect(wf.images).toEqual([]);
    expect(wf.mask).toEqual([]);
    expect(wf.outputs).toEqual(['9']);
  });

  it('finds the image and mask loaders of the shipped inpainting workflow', () => {
    const wf = parseWorkflow(readJson(INPAINT), INPAINT);
    expect(wf.images).toEqual([['10']]);
    expect(wf.mask).toEqual(['11']);
    expect(wf.size).toEqual([]);
    expect(wf.outputs).toEqual(['9']);
  });

  it('takes every SaveImage node as output when none is marked, and KSamplerAdvanced noise_seed as seed', () => {
    const wf = parseWorkflow(
      txt2img((w) => {
        w['9']!._meta = { title: 'Save Image' };
        w['10'] = { class_type: 'SaveImage', inputs: { filename_prefix: 'b', images: ['8', 0] } };
        w['3'] = { class_type: 'KSamplerAdvanced', inputs: { ...w['3']!.inputs, noise_seed: 1 }, _meta: { title: 'pixeld:seed' } };
        delete w['3']!.inputs.seed;
      }),
      'x.json',
    );
    expect(wf.outputs).toEqual(['9', '10']);
    expect(wf.seed).toEqual([{ nodeId: '3', inputs: ['noise_seed'] }]);
  });

  it('refuses the UI format, naming the file and how to export', () => {
    expect(parseError({ last_node_id: 9, nodes: [], links: [] })).toMatch(/^\/wf\/test\.json: .*UI workflow format.*Export \(API\)/);
  });

  it('refuses nodes that are not API-format nodes', () => {
    expect(parseError({ '1': { type: 'KSampler', widgets_values: [] } })).toMatch(/node 1 is not an API-format node/);
  });

  it('refuses an unknown marker (a typo must not silently drop the prompt)', () => {
    expect(parseError(txt2img((w) => (w['6']!._meta = { title: 'pixeld:prompt pixeld:promt' })))).toMatch(
      /node 6 \(CLIPTextEncode\) has an unknown marker pixeld:promt; known markers: .*pixeld:negative_prompt/,
    );
  });

  it('refuses a marker on an input that is a link', () => {
    expect(parseError(txt2img((w) => (w['6']!.inputs.text = ['4', 1])))).toMatch(/node 6 \(CLIPTextEncode\) input "text" is linked to another node/);
  });

  it('refuses a marker on a node without the input it writes', () => {
    expect(parseError(txt2img((w) => (w['8']!._meta = { title: 'pixeld:seed' })))).toMatch(/node 8 \(VAEDecode\) is marked pixeld:seed but has none of the inputs seed, noise_seed/);
  });

  it('requires a prompt marker and an output', () => {
    expect(parseError(txt2img((w) => (w['6']!._meta = { title: 'Positive' })))).toMatch(/no node is marked pixeld:prompt/);
    expect(parseError(txt2img((w) => (w['9'] = { class_type: 'PreviewImage', inputs: { images: ['8', 0] } })))).toMatch(/no output/);
  });

  it('requires image markers without gaps, and an image for a mask', () => {
    const wf = readJson(INPAINT);
    wf['10']!._meta = { title: 'pixeld:image_2' };
    expect(parseError(wf)).toMatch(/pixeld:image_2 is marked but pixeld:image is not/);
    const noImage = readJson(INPAINT);
    noImage['10']!._meta = { title: 'Load Image' };
    expect(parseError(noImage)).toMatch(/a pixeld:mask node needs a pixeld:image node/);
  });

  it('refuses a mask marker on a node without a channel input', () => {
    const wf = readJson(INPAINT);
    wf['11'] = { class_type: 'LoadImage', inputs: { image: 'm.png' }, _meta: { title: 'pixeld:mask' } };
    expect(parseError(wf)).toMatch(/node 11 \(LoadImage\) is marked pixeld:mask but has no "channel" input/);
  });

  it('refuses a link to a node that is not in the workflow', () => {
    expect(parseError(txt2img((w) => (w['8']!.inputs.vae = ['99', 2])))).toMatch(/node 8 \(VAEDecode\) input "vae" links to node 99/);
  });
});

describe('loading workflows at start-up', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'pixeld-comfy-wf-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const config = (workflows: Record<string, string>) =>
    comfyuiBackendSchema.parse({ id: 'comfy', type: 'comfyui', baseUrl: 'http://127.0.0.1:1', workflows });

  it('a missing file stops creation with a message naming the model and the file', () => {
    const missing = join(dir, 'nope.json');
    expect(() => createComfyUIBackend(config({ sd: missing }), { logger: silentLogger() })).toThrow(ConfigError);
    expect(() => loadWorkflows(config({ sd: missing }), dir)).toThrow(`config: backends.comfy.workflows.sd: cannot read workflow ${missing}: ENOENT`);
  });

  it('malformed JSON and a bad workflow name the file', async () => {
    const broken = join(dir, 'broken.json');
    await writeFile(broken, '{"3": {"class_type": ');
    expect(() => loadWorkflows(config({ sd: broken }), dir)).toThrow(new RegExp(`^config: backends\\.comfy\\.workflows\\.sd: workflow ${broken} is not valid JSON`));
    const ui = join(dir, 'ui.json');
    await writeFile(ui, JSON.stringify({ nodes: [], links: [] }));
    expect(() => loadWorkflows(config({ sd: ui }), dir)).toThrow(`config: backends.comfy.workflows.sd: workflow ${ui}: this is the UI workflow format`);
  });

  it('resolves relative paths against the working directory and refuses an empty map', async () => {
    await writeFile(join(dir, 'rel.json'), readFileSync(TXT2IMG));
    expect(loadWorkflows(config({ sd: 'rel.json' }), dir).get('sd')!.file).toBe(join(dir, 'rel.json'));
    expect(() => loadWorkflows(config({}), dir)).toThrow(/no workflow configured/);
  });
});

describe('planCall', () => {
  const gen = parseWorkflow(readJson(TXT2IMG), 'txt2img.json');
  const inpaint = parseWorkflow(readJson(INPAINT), 'inpaint.json');
  const batched = parseWorkflow(txt2img((w) => (w['5']!._meta = { title: 'pixeld:size pixeld:batch_size' })), 'batch.json');

  it('without a batch marker, n images are n prompts on seed, seed + 1, … (the runner’s seed contract)', () => {
    const plan = planCall(gen, backendCallOptions({ n: 3, seed: 100 }));
    expect(plan.prompts).toEqual([
      { seed: 100, batchSize: 1 },
      { seed: 101, batchSize: 1 },
      { seed: 102, batchSize: 1 },
    ]);
    expect(plan.warnings).toEqual([]);
  });

  it('with a batch marker, one prompt renders the batch and a warning says the seeds are shared', () => {
    const plan = planCall(batched, backendCallOptions({ n: 3, seed: 100 }));
    expect(plan.prompts).toEqual([{ seed: 100, batchSize: 3 }]);
    expect(plan.warnings).toEqual([expect.objectContaining({ feature: 'seed', message: expect.stringContaining('one ComfyUI batch on seed 100') })]);
    expect(planCall(batched, backendCallOptions({ n: 1 })).warnings).toEqual([]);
  });

  it('reports every option the workflow cannot take', () => {
    const bare = parseWorkflow(
      txt2img((w) => {
        w['3']!._meta = { title: 'KSampler' };
        w['5']!._meta = { title: 'Empty' };
        w['7']!._meta = { title: 'Negative' };
      }),
      'bare.json',
    );
    const plan = planCall(bare, backendCallOptions({ n: 2, negativePrompt: 'x', numInferenceSteps: 9, guidanceScale: 3, background: 'transparent' }));
    expect(plan.warnings.map((w) => w.feature).sort()).toEqual(['background', 'guidance_scale', 'negative_prompt', 'num_inference_steps', 'seed', 'size']);
    expect(plan.warnings.find((w) => w.feature === 'seed')!.message).toMatch(/images are the same/);
  });

  it('edits: refuses too few images or a workflow without image markers; ignores extra images with a warning', () => {
    expect(() => planCall(inpaint, backendCallOptions({ model: 'inp' }))).toThrow(new WorkflowCallError('the workflow for model inp takes 1 input image; the request has 0'));
    expect(() => planCall(gen, backendCallOptions({ model: 'sd', images: [image()] }))).toThrow(/takes no input image .* cannot edit/);
    const plan = planCall(inpaint, backendCallOptions({ size: '64x64', images: [image(), image(64, 64, 'b')], mask: image() }));
    expect(plan.imageCount).toBe(1);
    expect(plan.mask).toBe('given');
    expect(plan.warnings).toEqual([expect.objectContaining({ feature: 'image' })]);
  });

  it('edits without a mask on an inpainting workflow inpaint everywhere; a mask without a mask node is reported', () => {
    expect(planCall(inpaint, backendCallOptions({ size: '64x64', images: [image()] })).mask).toBe('all');
    const imgOnly = parseWorkflow(
      (() => {
        const w = readJson(INPAINT);
        w['11']!._meta = { title: 'Mask' };
        return w;
      })(),
      'img.json',
    );
    const plan = planCall(imgOnly, backendCallOptions({ size: '64x64', images: [image()], mask: image() }));
    expect(plan.mask).toBe('none');
    expect(plan.warnings).toEqual([expect.objectContaining({ type: 'unsupported', feature: 'mask' })]);
  });

  it('edits on a workflow without a size marker warn only when the requested size differs from the input', () => {
    expect(planCall(inpaint, backendCallOptions({ size: '64x64', images: [image()], mask: image() })).warnings).toEqual([]);
    const warned = planCall(inpaint, backendCallOptions({ size: '128x128', images: [image()], mask: image() })).warnings;
    expect(warned).toEqual([expect.objectContaining({ feature: 'size', message: expect.stringContaining('follows the input image (64x64)') })]);
  });
});

describe('buildPrompt', () => {
  const gen = parseWorkflow(readJson(TXT2IMG), 'txt2img.json');

  it('writes the call into the marked inputs and leaves the workflow untouched', () => {
    const before = structuredClone(gen.graph);
    const prompt = buildPrompt(
      gen,
      { prompt: 'a fox', negativePrompt: 'rain', size: '320x192', numInferenceSteps: 12, guidanceScale: 4.5 },
      { seed: 77, batchSize: 1 },
      { images: [], mask: undefined },
    );
    expect(prompt['6']!.inputs.text).toBe('a fox');
    expect(prompt['7']!.inputs.text).toBe('rain');
    expect(prompt['3']!.inputs).toMatchObject({ seed: 77, steps: 12, cfg: 4.5, model: ['4', 0] });
    expect(prompt['5']!.inputs).toEqual({ width: 320, height: 192, batch_size: 1 });
    expect(gen.graph).toEqual(before);
  });

  it('keeps the workflow’s own values for options the caller did not send', () => {
    const prompt = buildPrompt(gen, { prompt: 'p', negativePrompt: undefined, size: '64x64', numInferenceSteps: undefined, guidanceScale: undefined }, { seed: 1, batchSize: 1 }, { images: [], mask: undefined });
    expect(prompt['7']!.inputs.text).toBe(gen.graph['7']!.inputs.text);
    expect(prompt['3']!.inputs.steps).toBe(20);
    expect(prompt['3']!.inputs.cfg).toBe(7);
  });

  it('points loaders at the uploads and forces the mask channel to red whatever the export said', () => {
    const raw = readJson(INPAINT);
    raw['11']!.inputs.channel = 'alpha';
    const wf = parseWorkflow(raw, 'inpaint.json');
    const prompt = buildPrompt(
      wf,
      { prompt: 'p', negativePrompt: undefined, size: '64x64', numInferenceSteps: undefined, guidanceScale: undefined },
      { seed: 5, batchSize: 1 },
      { images: [{ name: 'in.png', subfolder: 'pixeld' }], mask: { name: 'mask.png', subfolder: '' } },
    );
    expect(prompt['10']!.inputs.image).toBe('pixeld/in.png');
    expect(prompt['11']!.inputs).toEqual({ image: 'mask.png', channel: MASK_CHANNEL });
    expect(MASK_CHANNEL).toBe('red');
  });

  it('sets batch_size from the plan on a batch workflow', () => {
    const batched = parseWorkflow(txt2img((w) => (w['5']!._meta = { title: 'pixeld:size pixeld:batch_size' })), 'b.json');
    const prompt = buildPrompt(batched, { prompt: 'p', negativePrompt: undefined, size: '64x64', numInferenceSteps: undefined, guidanceScale: undefined }, { seed: 5, batchSize: 4 }, { images: [], mask: undefined });
    expect(prompt['5']!.inputs.batch_size).toBe(4);
  });

  it('builds prompts the fake ComfyUI accepts (its validation is the real one’s shape)', () => {
    const prompt = buildPrompt(gen, { prompt: 'p', negativePrompt: undefined, size: '64x64', numInferenceSteps: undefined, guidanceScale: undefined }, { seed: 5, batchSize: 1 }, { images: [], mask: undefined });
    expect(validatePrompt(prompt, { checkpoints: ['v1-5-pruned-emaonly.safetensors'], files: new Map() })).toEqual({ ok: true, outputs: ['9'] });
  });
});

describe('mask conversion', () => {
  it('an OpenAI alpha mask becomes a grayscale PNG whose red channel (what LoadImageMask reads) is 255 − alpha', async () => {
    const alphas = [0, 64, 128, 255];
    const rgba = Buffer.alloc(alphas.length * 4);
    alphas.forEach((a, i) => {
      rgba.set([10, 200, 30, a], i * 4);
    });
    const openai = await sharp(rgba, { raw: { width: 4, height: 1, channels: 4 } }).png().toBuffer();
    const converted = await toComfyMask(openai);
    const meta = await sharp(converted).metadata();
    expect(meta).toMatchObject({ format: 'png', channels: 1, width: 4, height: 1 });
    // Read it the way ComfyUI's LoadImageMask does: convert to RGBA, take the channel named by MASK_CHANNEL.
    const { data, info } = await sharp(converted).toColourspace('srgb').ensureAlpha().raw().toBuffer({ resolveWithObject: true });
    const red = alphas.map((_, i) => data[i * info.channels]!);
    expect(red).toEqual([255, 191, 127, 0]);
    // Opaque alpha after the conversion: a workflow left on channel "alpha" would see no mask at all,
    // which is why the adapter forces the channel.
    expect(alphas.map((_, i) => data[i * info.channels + 3]!)).toEqual([255, 255, 255, 255]);
  });
});

describe('reading ComfyUI answers', () => {
  const graph = readJson(TXT2IMG);

  it('names the node, its title and class, and the problem of a validation error, nodes first', () => {
    const body = {
      error: { type: 'prompt_outputs_failed_validation', message: 'Prompt outputs failed validation', details: '', extra_info: {} },
      node_errors: {
        '4': {
          errors: [
            {
              type: 'value_not_in_list',
              message: 'Value not in list',
              details: `ckpt_name: 'missing.safetensors' not in ${JSON.stringify(Array.from({ length: 40 }, (_, i) => `model-${i}.safetensors`))}`,
              extra_info: {},
            },
          ],
          dependent_outputs: ['9'],
          class_type: 'CheckpointLoaderSimple',
        },
      },
    };
    const message = describePromptError(body, graph);
    expect(message).toMatch(/^node 4 "Load Checkpoint" \(CheckpointLoaderSimple\): Value not in list: ckpt_name: 'missing\.safetensors' not in/);
    expect(message).toMatch(/— ComfyUI rejected the workflow: Prompt outputs failed validation$/);
    expect(message.length).toBeLessThan(300);
  });

  it('describes graph-level errors that come with node_errors: []', () => {
    const body = { error: { type: 'invalid_prompt', message: 'Cannot execute because node Foo does not exist.', details: "Node ID '#5'", extra_info: {} }, node_errors: [] };
    expect(describePromptError(body)).toBe("ComfyUI rejected the workflow: Cannot execute because node Foo does not exist. (Node ID '#5')");
  });

  it('describes execution errors and tells out-of-memory apart', () => {
    const error = describeExecutionError(
      { prompt_id: 'p', node_id: '3', node_type: 'KSampler', exception_type: 'RuntimeError', exception_message: 'shape mismatch\n', traceback: [] },
      graph,
    );
    expect(error).toEqual({ message: 'ComfyUI failed in node 3 "KSampler [pixeld:seed pixeld:steps pixeld:cfg]" (KSampler): RuntimeError: shape mismatch', outOfMemory: false });
    expect(describeExecutionError({ node_id: '3', node_type: 'KSampler', exception_type: 'torch.OutOfMemoryError', exception_message: 'CUDA out of memory.' }).outOfMemory).toBe(true);
  });

  it('reads history entries: {} means nothing yet; outputs in workflow order; errors and interruptions', () => {
    expect(readHistoryEntry({}, 'p1')).toBeUndefined();
    const entry = readHistoryEntry(
      {
        p1: {
          prompt: [1, 'p1', {}, {}, ['9']],
          outputs: {
            '12': { images: [{ filename: 'other.png', subfolder: '', type: 'temp' }] },
            '9': { images: [{ filename: 'a.png', subfolder: 'pixeld', type: 'output' }, { filename: 'b.png', subfolder: 'pixeld', type: 'output' }] },
          },
          status: { status_str: 'success', completed: true, messages: [['execution_start', {}]] },
        },
      },
      'p1',
    )!;
    expect(promptOutcome(entry, ['9'])).toEqual({
      kind: 'success',
      images: [
        { filename: 'a.png', subfolder: 'pixeld', type: 'output' },
        { filename: 'b.png', subfolder: 'pixeld', type: 'output' },
      ],
    });
    const failed = readHistoryEntry({ p2: { outputs: {}, status: { status_str: 'error', messages: [['execution_error', { node_id: '3' }]] } } }, 'p2')!;
    expect(promptOutcome(failed, ['9'])).toEqual({ kind: 'error', data: { node_id: '3' } });
    const stopped = readHistoryEntry({ p3: { outputs: {}, status: { status_str: 'error', messages: [['execution_interrupted', {}]] } } }, 'p3')!;
    expect(promptOutcome(stopped, ['9'])).toEqual({ kind: 'interrupted' });
  });

  it('finds a prompt in /queue', () => {
    const queue = { queue_running: [[1, 'run', {}, {}, []]], queue_pending: [[2, 'wait', {}, {}, []]] };
    expect(queuePosition(queue, 'run')).toBe('running');
    expect(queuePosition(queue, 'wait')).toBe('pending');
    expect(queuePosition(queue, 'gone')).toBeUndefined();
  });
});

describe('the adapter against the fake ComfyUI', () => {
  let fake: FakeComfyUI | undefined;
  let backend: ImageBackend | undefined;
  afterEach(async () => {
    await backend?.close?.();
    await fake?.close();
    backend = undefined;
    fake = undefined;
  });

  async function start(jobsApi: boolean, extra: Record<string, unknown> = {}): Promise<{ fake: FakeComfyUI; backend: ImageBackend }> {
    fake = await startFakeComfyUI({ jobsApi });
    backend = createComfyUIBackend(
      // reconcileIntervalMs far beyond the test timeout, unless a test exercises it: state must come from polling.
      comfyuiBackendSchema.parse({ id: 'comfy', type: 'comfyui', baseUrl: fake.url, pollIntervalMs: 50, reconcileIntervalMs: 120_000, workflows: { sd: TXT2IMG }, ...extra }),
      { logger: silentLogger() },
    );
    return { fake, backend };
  }

  it('without /api/jobs and without a socket, follows the prompt through /history/{id} and /queue only', async () => {
    const { fake, backend } = await start(false);
    fake.setBehaviour({ refuseWebSockets: true, runMs: 300 });
    const progress: number[] = [];
    const result = await backend.generate(backendCallOptions({ model: 'sd', size: '64x48', seed: 9, onProgress: (p) => progress.push(p) }));
    const { data, info } = await sharp(result.images[0]!).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height]).toEqual([64, 48]);
    expect([...data.subarray(0, 3)]).toEqual(fakeSampleColour(9));
    const id = fake.prompts[0]!.id;
    const gets = fake.requests.filter((r) => r.method === 'GET').map((r) => r.path);
    expect(gets).toContain(`/history/${id}`);
    expect(gets).toContain('/queue');
    expect(gets).not.toContain('/history');
    // Without a socket there are no progress events; the call still ends at 100.
    expect(progress.at(-1)).toBe(100);
  });

  it('reports progress from websocket events, rising to 100', async () => {
    const { backend } = await start(true);
    const progress: number[] = [];
    await backend.generate(backendCallOptions({ model: 'sd', onProgress: (p) => progress.push(p) }));
    expect(progress.some((p) => p > 0 && p < 100)).toBe(true);
    expect(progress.at(-1)).toBe(100);
    expect([...progress].sort((a, b) => a - b)).toEqual(progress);
  });

  it('an abort while queued deletes the prompt from the queue and never interrupts', async () => {
    const { fake, backend } = await start(true);
    fake.setBehaviour({ paused: true });
    const controller = new AbortController();
    const call = backend.generate(backendCallOptions({ model: 'sd', signal: controller.signal }));
    while (fake.prompts.length === 0) await new Promise((r) => setTimeout(r, 10));
    controller.abort(new DOMException('cancelled', 'AbortError'));
    await expect(call).rejects.toMatchObject({ name: 'AbortError' });
    expect(fake.deletes).toEqual([fake.prompts[0]!.id]);
    expect(fake.interrupts).toEqual([]);
    expect(fake.queueState().pending).toEqual([]);
  });

  it('a prompt ComfyUI no longer knows (restarted) fails as unavailable, so the runner may submit again', async () => {
    const { fake, backend } = await start(true, { reconcileIntervalMs: 100 });
    fake.setBehaviour({ paused: true });
    const call = backend.generate(backendCallOptions({ model: 'sd' }));
    while (fake.prompts.length === 0) await new Promise((r) => setTimeout(r, 10));
    // Someone clears the queue behind our back: the prompt is gone without a trace.
    await fetch(`${fake.url}/queue`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ clear: true }) });
    const err = await call.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendError);
    expect(err).toMatchObject({ kind: 'unavailable', message: expect.stringContaining('no longer knows the prompt') });
  });

  it('refuses a model without a workflow, as a rejection', async () => {
    const { backend } = await start(true);
    await expect(backend.generate(backendCallOptions({ model: 'other' }))).rejects.toMatchObject({ kind: 'rejected', message: expect.stringContaining('no ComfyUI workflow is configured for model other') });
  });

  it('checkHealth reads healthPath and fails when ComfyUI is gone', async () => {
    const { fake, backend } = await start(true);
    await backend.checkHealth(AbortSignal.timeout(2_000));
    expect(fake.requests.some((r) => r.path === '/system_stats')).toBe(true);
    await fake.close();
    await expect(backend.checkHealth(AbortSignal.timeout(2_000))).rejects.toMatchObject({ kind: 'unavailable' });
  });

  it('exposes id, type, maxImagesPerCall and rerunInterruptedJobs from the config', async () => {
    const { backend } = await start(true, { maxImagesPerCall: 3, rerunInterruptedJobs: false });
    expect([backend.id, backend.type, backend.maxImagesPerCall, backend.rerunInterruptedJobs]).toEqual(['comfy', 'comfyui', 3, false]);
    expect(comfyuiBackendSchema.parse({ id: 'c', type: 'comfyui', baseUrl: 'http://x', workflows: {} }).rerunInterruptedJobs).toBe(true);
  });
});
