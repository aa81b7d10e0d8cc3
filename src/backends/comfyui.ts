/**
 * Adapter for ComfyUI. The provider supplies one API-format workflow per model; nodes whose `_meta.title`
 * carries a `pixeld:<role>` marker receive the prompt, seed, size, images and mask of each call (the
 * marker convention is documented in config/comfyui/README.md and enforced by `parseWorkflow`).
 *
 * One `generate` is one ComfyUI job: inputs are uploaded, the prompt is queued under a prompt_id chosen
 * here, its progress is followed on the `/ws` websocket, and the result images are read from
 * `/history/{id}` and downloaded from `/view`. ComfyUI is stateful (a queue that outlives our HTTP
 * requests), so losing the socket is not losing the job: the adapter falls back to polling and reconciles
 * when the socket returns. Cancelling removes or interrupts exactly our prompt, never whatever else runs.
 *
 * The workflow mapping is kept in pure exported functions so it can be tested without sockets.
 */
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { Agent, FormData, request, WebSocket } from 'undici';
import type { Dispatcher } from 'undici';
import { ConfigError } from '../config/load.js';
import type { ComfyUIBackendConfig } from '../config/schema.js';
import { toWhiteInpaintMask } from '../images/masks.js';
import type { Logger } from '../obs/logger.js';
import { BackendError, sanitizeUpstreamMessage } from './errors.js';
import type { BackendFailureKind } from './errors.js';
import { joinUrl, redactUrl, requestTimeouts } from './openai.js';
import type { BackendCallOptions, BackendCallResult, BackendWarning, ImageBackend } from './types.js';
import { PROGRAMMING_ERROR_CODES, closeAgent, errorCode, isRecord } from './upstream.js';

/** Bytes of an error body read to find the message. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;
/** `/queue` carries every queued prompt in full; a long queue of big workflows is still well under this. */
const MAX_JSON_BYTES = 32 * 1024 * 1024;
/** How long the best-effort cleanup after an abort (queue delete, targeted interrupt) may take. */
const CANCEL_TIMEOUT_MS = 5_000;
/** Longest text of one node error kept in a message: value_not_in_list lists every model file. */
const MAX_NODE_ERROR_CHARS = 160;

/** The channel the adapter makes every `pixeld:mask` node read: the uploaded mask is grayscale, white = inpaint. */
export const MASK_CHANNEL = 'red';

export interface ComfyUIBackendDeps {
  logger: Logger;
  /** Clock in epoch ms. @default Date.now */
  now?: () => number;
  /** Resolves relative workflow paths. @default process.cwd() */
  cwd?: string;
}

// ---------------------------------------------------------------------------------------------------------
// Workflows and markers
// ---------------------------------------------------------------------------------------------------------

/** A node of an API-format workflow (what "Export (API)" writes): inputs hold literals or [nodeId, output] links. */
export interface ApiNode {
  class_type: string;
  inputs: Record<string, unknown>;
  _meta?: { title?: string };
}

export type ApiWorkflow = Record<string, ApiNode>;

/** Node inputs a marker writes to. */
export interface InputTarget {
  nodeId: string;
  inputs: string[];
}

export interface ComfyWorkflow {
  /** The file it came from, for messages. */
  file: string;
  graph: ApiWorkflow;
  prompt: InputTarget[];
  negativePrompt: InputTarget[];
  seed: InputTarget[];
  /** Nodes whose `width` and `height` receive the requested size. */
  size: string[];
  batchSize: InputTarget[];
  steps: InputTarget[];
  cfg: InputTarget[];
  /** images[i]: the image-loader nodes that receive input image i. */
  images: string[][];
  /** Mask-loader nodes; their `image` receives the converted mask and `channel` is set to MASK_CHANNEL. */
  mask: string[];
  /** Nodes whose images are the result, in workflow order. */
  outputs: string[];
}

/** A workflow that cannot be used; the message names the file. */
export class WorkflowError extends Error {
  override readonly name = 'WorkflowError';
}

const SCALAR_ROLES = {
  prompt: ['text', 'text_g', 'text_l', 'prompt'],
  negative_prompt: ['text', 'text_g', 'text_l', 'prompt'],
  seed: ['seed', 'noise_seed'],
  batch_size: ['batch_size'],
  steps: ['steps'],
  cfg: ['cfg'],
} as const;
type ScalarRole = keyof typeof SCALAR_ROLES;
const KNOWN_MARKERS = [...Object.keys(SCALAR_ROLES), 'size', 'image', 'image_<n>', 'mask', 'output'];
const MARKER = /pixeld:([A-Za-z0-9_]+)/g;


function isLink(value: unknown): boolean {
  return Array.isArray(value) && value.length === 2 && (typeof value[0] === 'string' || typeof value[0] === 'number');
}

/**
 * Validates an API-format workflow and finds its markers. Every problem is reported with the file, the
 * node and the input, so a provider can fix the workflow from the start-up message alone.
 */
export function parseWorkflow(json: unknown, file: string): ComfyWorkflow {
  const fail = (message: string): never => {
    throw new WorkflowError(`${file}: ${message}`);
  };
  if (!isRecord(json)) fail('not a JSON object; export the workflow with "Export (API)"');
  const raw = json as Record<string, unknown>;
  if (Array.isArray(raw.nodes) || Array.isArray(raw.links)) {
    fail('this is the UI workflow format (it has "nodes" and "links"); export it with "Export (API)" instead');
  }
  if (Object.keys(raw).length === 0) fail('the workflow has no nodes');
  const graph: ApiWorkflow = {};
  for (const [id, node] of Object.entries(raw)) {
    if (!isRecord(node) || typeof node.class_type !== 'string' || !isRecord(node.inputs)) {
      fail(`node ${id} is not an API-format node (needs "class_type" and "inputs"); export with "Export (API)"`);
    }
    const n = node as Record<string, unknown> & { class_type: string; inputs: Record<string, unknown> };
    const meta = isRecord(n._meta) && typeof n._meta.title === 'string' ? { title: n._meta.title } : undefined;
    graph[id] = { class_type: n.class_type, inputs: { ...n.inputs }, ...(meta ? { _meta: meta } : {}) };
  }
  for (const [id, node] of Object.entries(graph)) {
    for (const [input, value] of Object.entries(node.inputs)) {
      if (isLink(value) && graph[String((value as unknown[])[0])] === undefined) {
        fail(`node ${id} (${node.class_type}) input "${input}" links to node ${String((value as unknown[])[0])}, which is not in the workflow`);
      }
    }
  }

  const wf: ComfyWorkflow = {
    file,
    graph,
    prompt: [],
    negativePrompt: [],
    seed: [],
    size: [],
    batchSize: [],
    steps: [],
    cfg: [],
    images: [],
    mask: [],
    outputs: [],
  };
  const imageSlots = new Map<number, string[]>();
  const marked: string[] = [];

  const literalInputs = (id: string, node: ApiNode, role: string, candidates: readonly string[], kind: 'string' | 'number'): string[] => {
    const found = candidates.filter((c) => c in node.inputs);
    if (found.length === 0) {
      fail(`node ${id} (${node.class_type}) is marked pixeld:${role} but has none of the inputs ${candidates.join(', ')}`);
    }
    for (const input of found) {
      const value = node.inputs[input];
      if (isLink(value)) {
        fail(`node ${id} (${node.class_type}) input "${input}" is linked to another node; put pixeld:${role} on the node that holds the value`);
      }
      if (typeof value !== kind) fail(`node ${id} (${node.class_type}) input "${input}" must be a ${kind} for pixeld:${role}`);
    }
    return found;
  };

  for (const [id, node] of Object.entries(graph)) {
    const title = node._meta?.title ?? '';
    for (const match of title.matchAll(MARKER)) {
      const role = match[1]!;
      marked.push(role);
      if (role in SCALAR_ROLES) {
        const scalar = role as ScalarRole;
        const kind = scalar === 'prompt' || scalar === 'negative_prompt' ? 'string' : 'number';
        const target = { nodeId: id, inputs: literalInputs(id, node, role, SCALAR_ROLES[scalar], kind) };
        const list = {
          prompt: wf.prompt,
          negative_prompt: wf.negativePrompt,
          seed: wf.seed,
          batch_size: wf.batchSize,
          steps: wf.steps,
          cfg: wf.cfg,
        }[scalar];
        list.push(target);
        continue;
      }
      if (role === 'size') {
        literalInputs(id, node, role, ['width'], 'number');
        literalInputs(id, node, role, ['height'], 'number');
        wf.size.push(id);
        continue;
      }
      const imageMatch = /^image(?:_(\d+))?$/.exec(role);
      if (imageMatch) {
        const index = imageMatch[1] === undefined ? 1 : Number(imageMatch[1]);
        if (index < 1 || (imageMatch[1] !== undefined && index < 2)) fail(`node ${id}: use pixeld:image for the first image and pixeld:image_2, pixeld:image_3 … for the others`);
        literalInputs(id, node, role, ['image'], 'string');
        imageSlots.set(index, [...(imageSlots.get(index) ?? []), id]);
        continue;
      }
      if (role === 'mask') {
        literalInputs(id, node, role, ['image'], 'string');
        if (!('channel' in node.inputs)) {
          fail(`node ${id} (${node.class_type}) is marked pixeld:mask but has no "channel" input; use a LoadImageMask node`);
        }
        wf.mask.push(id);
        continue;
      }
      if (role === 'output') {
        wf.outputs.push(id);
        continue;
      }
      fail(`node ${id} (${node.class_type}) has an unknown marker pixeld:${role}; known markers: ${KNOWN_MARKERS.map((m) => `pixeld:${m}`).join(', ')}`);
    }
  }

  if (wf.prompt.length === 0) fail('no node is marked pixeld:prompt (put it in the title of the positive CLIPTextEncode node)');
  const slots = [...imageSlots.keys()].sort((a, b) => a - b);
  slots.forEach((slot, i) => {
    if (slot !== i + 1) fail(`pixeld:image_${slot} is marked but ${i + 1 === 1 ? 'pixeld:image' : `pixeld:image_${i + 1}`} is not`);
  });
  wf.images = slots.map((s) => imageSlots.get(s)!);
  if (wf.mask.length > 0 && wf.images.length === 0) fail('a pixeld:mask node needs a pixeld:image node: the mask applies to the first image');
  if (wf.outputs.length === 0) {
    wf.outputs = Object.entries(graph)
      .filter(([, node]) => node.class_type === 'SaveImage')
      .map(([id]) => id);
    if (wf.outputs.length === 0) fail('no output: add a SaveImage node, or mark the node(s) whose images are the result with pixeld:output');
  }
  return wf;
}

/** Reads and validates every configured workflow; relative paths resolve against `cwd`. */
export function loadWorkflows(config: Pick<ComfyUIBackendConfig, 'id' | 'workflows'>, cwd: string): Map<string, ComfyWorkflow> {
  const entries = Object.entries(config.workflows);
  if (entries.length === 0) {
    throw new ConfigError(`config: backends.${config.id}.workflows: no workflow configured; map each model to an API-format workflow file`);
  }
  const loaded = new Map<string, ComfyWorkflow>();
  for (const [model, file] of entries) {
    const where = `config: backends.${config.id}.workflows.${model}`;
    const resolved = path.resolve(cwd, file);
    let text: string;
    try {
      text = readFileSync(resolved, 'utf8');
    } catch (err) {
      throw new ConfigError(`${where}: cannot read workflow ${resolved}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new ConfigError(`${where}: workflow ${resolved} is not valid JSON: ${(err as Error).message.split('\n')[0]}`);
    }
    try {
      loaded.set(model, parseWorkflow(json, resolved));
    } catch (err) {
      if (err instanceof WorkflowError) throw new ConfigError(`${where}: workflow ${err.message}`);
      throw err;
    }
  }
  return loaded;
}

// ---------------------------------------------------------------------------------------------------------
// Mapping a call onto a workflow (pure)
// ---------------------------------------------------------------------------------------------------------

/** One ComfyUI prompt of a call. */
export interface PromptPlan {
  seed: number;
  batchSize: number;
}

export interface CallPlan {
  prompts: PromptPlan[];
  /** How many of the call's images are uploaded (the workflow's image slots). */
  imageCount: number;
  /** `given`: convert the caller's mask; `all`: the workflow wants a mask and none was sent, so everything is editable. */
  mask: 'given' | 'all' | 'none';
  warnings: BackendWarning[];
}

/** The call cannot run on this workflow; the request is the problem, not the backend's health. */
export class WorkflowCallError extends Error {
  override readonly name = 'WorkflowCallError';
}

type PlanOptions = Pick<
  BackendCallOptions,
  'model' | 'n' | 'seed' | 'size' | 'background' | 'negativePrompt' | 'numInferenceSteps' | 'guidanceScale' | 'images' | 'mask'
>;

/**
 * Decides how a call runs. With a `pixeld:batch_size` marker the n images are one ComfyUI batch: faster,
 * but a batch shares one seed (ComfyUI derives the noise of image i from the batch), so image i cannot be
 * reproduced with seed + i alone — said in a warning. Without the marker the call is n prompts with seeds
 * seed, seed + 1, …, which keeps the runner's seed contract exactly.
 */
export function planCall(workflow: ComfyWorkflow, options: PlanOptions): CallPlan {
  const warnings: BackendWarning[] = [];
  const images = options.images ?? [];
  const slots = workflow.images.length;
  if (images.length > 0 && slots === 0) {
    throw new WorkflowCallError(`the workflow for model ${options.model} takes no input image (no pixeld:image marker): it cannot edit`);
  }
  if (images.length < slots) {
    throw new WorkflowCallError(
      `the workflow for model ${options.model} takes ${slots} input image${slots === 1 ? '' : 's'}; the request has ${images.length}`,
    );
  }
  if (images.length > slots) {
    warnings.push({ type: 'other', feature: 'image', message: `the workflow takes ${slots} input image(s); the other ${images.length - slots} were not used` });
  }
  let mask: CallPlan['mask'] = 'none';
  if (workflow.mask.length > 0) mask = options.mask !== undefined ? 'given' : 'all';
  else if (options.mask !== undefined) {
    warnings.push({ type: 'unsupported', feature: 'mask', message: 'the workflow has no pixeld:mask node; the mask was not used' });
  }

  const batched = workflow.batchSize.length > 0;
  const prompts: PromptPlan[] = batched
    ? [{ seed: options.seed, batchSize: options.n }]
    : Array.from({ length: options.n }, (_, i) => ({ seed: options.seed + i, batchSize: 1 }));
  if (workflow.seed.length === 0) {
    warnings.push({
      type: 'unsupported',
      feature: 'seed',
      message:
        options.n > 1 && !batched
          ? 'the workflow has no pixeld:seed marker: every image uses the seed saved in the workflow, so the images are the same'
          : 'the workflow has no pixeld:seed marker; the seed saved in the workflow was used',
    });
  } else if (batched && options.n > 1) {
    warnings.push({
      type: 'other',
      feature: 'seed',
      message: `the ${options.n} images are one ComfyUI batch on seed ${options.seed}: image i is not reproducible with seed ${options.seed} + i alone`,
    });
  }
  if (workflow.size.length === 0) {
    const first = images[0];
    if (first === undefined) {
      warnings.push({ type: 'unsupported', feature: 'size', message: 'the workflow has no pixeld:size marker; the size saved in the workflow was used' });
    } else if (`${first.width}x${first.height}` !== options.size) {
      warnings.push({ type: 'unsupported', feature: 'size', message: `the workflow has no pixeld:size marker; the output follows the input image (${first.width}x${first.height})` });
    }
  }
  if (options.negativePrompt !== undefined && workflow.negativePrompt.length === 0) {
    warnings.push({ type: 'unsupported', feature: 'negative_prompt', message: 'the workflow has no pixeld:negative_prompt marker; it was not used' });
  }
  if (options.numInferenceSteps !== undefined && workflow.steps.length === 0) {
    warnings.push({ type: 'unsupported', feature: 'num_inference_steps', message: 'the workflow has no pixeld:steps marker; it was not used' });
  }
  if (options.guidanceScale !== undefined && workflow.cfg.length === 0) {
    warnings.push({ type: 'unsupported', feature: 'guidance_scale', message: 'the workflow has no pixeld:cfg marker; it was not used' });
  }
  if (options.background === 'transparent') {
    warnings.push({ type: 'unsupported', feature: 'background', message: 'ComfyUI workflows render opaque images' });
  }
  // `quality` has no mapping on purpose: it always has a value (the model's default), and a workflow's
  // steps and sampler are the provider's choice of quality.
  return { prompts, imageCount: slots, mask, warnings };
}

/** A file in ComfyUI's input directory, as `/upload/image` answered. */
export interface UploadedFile {
  name: string;
  subfolder: string;
}

/** How LoadImage names a file in a subfolder of the input directory. */
export function inputFileReference(file: UploadedFile): string {
  return file.subfolder === '' ? file.name : `${file.subfolder}/${file.name}`;
}

type PromptOptions = Pick<BackendCallOptions, 'prompt' | 'negativePrompt' | 'size' | 'numInferenceSteps' | 'guidanceScale'>;

/** The workflow with one prompt's values written into its marked inputs; the workflow itself is not changed. */
export function buildPrompt(
  workflow: ComfyWorkflow,
  options: PromptOptions,
  plan: PromptPlan,
  uploads: { images: UploadedFile[]; mask: UploadedFile | undefined },
): ApiWorkflow {
  const graph = structuredClone(workflow.graph);
  const set = (targets: InputTarget[], value: unknown): void => {
    for (const t of targets) for (const input of t.inputs) graph[t.nodeId]!.inputs[input] = value;
  };
  set(workflow.prompt, options.prompt);
  if (options.negativePrompt !== undefined) set(workflow.negativePrompt, options.negativePrompt);
  set(workflow.seed, plan.seed);
  set(workflow.batchSize, plan.batchSize);
  if (options.numInferenceSteps !== undefined) set(workflow.steps, options.numInferenceSteps);
  if (options.guidanceScale !== undefined) set(workflow.cfg, options.guidanceScale);
  const [width, height] = options.size.split('x').map(Number) as [number, number];
  for (const id of workflow.size) Object.assign(graph[id]!.inputs, { width, height });
  workflow.images.forEach((nodes, i) => {
    const file = uploads.images[i];
    if (file === undefined) return;
    for (const id of nodes) graph[id]!.inputs.image = inputFileReference(file);
  });
  if (uploads.mask !== undefined) {
    for (const id of workflow.mask) Object.assign(graph[id]!.inputs, { image: inputFileReference(uploads.mask), channel: MASK_CHANNEL });
  }
  return graph;
}

/**
 * The mask as the workflow reads it: a grayscale PNG, white = inpaint (255 − OpenAI alpha), loaded with
 * channel red. LoadImageMask converts a grayscale image to RGBA with R = G = B = L, so red is the gray value.
 */
export async function toComfyMask(openaiMask: Uint8Array): Promise<Buffer> {
  return toWhiteInpaintMask(openaiMask);
}

/** A white mask: edits without a mask may change the whole image, as with OpenAI. */
export async function fullInpaintMask(width: number, height: number): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: '#ffffff' } }).toColourspace('b-w').png().toBuffer();
}

// ---------------------------------------------------------------------------------------------------------
// Reading ComfyUI's answers (pure)
// ---------------------------------------------------------------------------------------------------------

function truncate(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

function nodeLabel(nodeId: string, classType: unknown, graph: ApiWorkflow | undefined): string {
  const type = typeof classType === 'string' ? classType : graph?.[nodeId]?.class_type;
  const title = graph?.[nodeId]?._meta?.title;
  return `node ${nodeId}${title ? ` "${title}"` : ''}${type ? ` (${type})` : ''}`;
}

/**
 * The readable message of a `POST /prompt` rejection: `{"error": {type, message, details}, "node_errors":
 * {id: {errors: [{message, details}], class_type}}}` (node_errors is `[]` when the graph itself is bad).
 * Nodes come first, since the long `details` of value_not_in_list would otherwise push them off the end.
 */
export function describePromptError(body: unknown, graph?: ApiWorkflow): string {
  if (!isRecord(body)) return typeof body === 'string' && body.trim() !== '' ? body : 'ComfyUI rejected the workflow';
  const { error, node_errors: nodeErrors } = body;
  const nodes: string[] = [];
  if (isRecord(nodeErrors)) {
    for (const [id, entry] of Object.entries(nodeErrors)) {
      if (!isRecord(entry)) continue;
      const errors = Array.isArray(entry.errors) ? entry.errors.filter(isRecord) : [];
      const texts = errors.map((e) => {
        const message = typeof e.message === 'string' ? e.message : 'invalid';
        const details = typeof e.details === 'string' && e.details !== '' ? `: ${e.details}` : '';
        return truncate(`${message}${details}`, MAX_NODE_ERROR_CHARS);
      });
      nodes.push(`${nodeLabel(id, entry.class_type, graph)}: ${texts.length > 0 ? texts.join('; ') : 'invalid'}`);
    }
  }
  let head = 'ComfyUI rejected the workflow';
  if (isRecord(error)) {
    const message = typeof error.message === 'string' ? error.message : undefined;
    const details = typeof error.details === 'string' && error.details !== '' ? error.details : undefined;
    if (message !== undefined) head = `ComfyUI rejected the workflow: ${message}${details && nodes.length === 0 ? ` (${details})` : ''}`;
  } else if (typeof error === 'string' && error !== '') {
    head = `ComfyUI rejected the workflow: ${error}`;
  }
  return nodes.length > 0 ? `${nodes.join(' | ')} — ${head}` : head;
}

/** The message of any other ComfyUI error answer: `{"error": {message}}`, `{"error": "…"}`, `{"message"}` or text. */
export function describeErrorBody(body: unknown): string | undefined {
  if (typeof body === 'string') return body.trim() !== '' ? body : undefined;
  if (!isRecord(body)) return undefined;
  if (isRecord(body.error) && typeof body.error.message === 'string') return body.error.message;
  if (typeof body.error === 'string' && body.error !== '') return body.error;
  if (typeof body.message === 'string' && body.message !== '') return body.message;
  return undefined;
}

/** The message of an `execution_error` event (or the same record kept in the history). */
export function describeExecutionError(data: unknown, graph?: ApiWorkflow): { message: string; outOfMemory: boolean } {
  const d = isRecord(data) ? data : {};
  const nodeId = typeof d.node_id === 'string' || typeof d.node_id === 'number' ? String(d.node_id) : undefined;
  const where = nodeId !== undefined ? nodeLabel(nodeId, d.node_type, graph) : typeof d.node_type === 'string' ? d.node_type : 'a node';
  const type = typeof d.exception_type === 'string' ? d.exception_type : '';
  const text = typeof d.exception_message === 'string' ? d.exception_message.trim() : '';
  const exception = [type, text].filter((s) => s !== '').join(': ') || 'no message';
  const outOfMemory = /out ?of ?memory|OutOfMemory/i.test(`${type} ${text}`);
  return { message: `ComfyUI failed in ${where}: ${exception}`, outOfMemory };
}

export interface ImageRef {
  filename: string;
  subfolder: string;
  type: string;
}

/** One prompt's `/history/{id}` entry, reduced to what the adapter needs. */
export interface HistoryEntry {
  outputs: Record<string, unknown>;
  statusStr: string | undefined;
  messages: Array<[string, unknown]>;
}

/** `/history/{id}` answers `{}` for unknown and unfinished prompts alike; undefined then. */
export function readHistoryEntry(body: unknown, promptId: string): HistoryEntry | undefined {
  if (!isRecord(body)) return undefined;
  const entry = body[promptId];
  if (!isRecord(entry)) return undefined;
  const status = isRecord(entry.status) ? entry.status : {};
  const messages = Array.isArray(status.messages)
    ? status.messages.filter((m): m is [string, unknown] => Array.isArray(m) && typeof m[0] === 'string')
    : [];
  return {
    outputs: isRecord(entry.outputs) ? entry.outputs : {},
    statusStr: typeof status.status_str === 'string' ? status.status_str : undefined,
    messages,
  };
}

export type PromptOutcome =
  | { kind: 'success'; images: ImageRef[] }
  | { kind: 'error'; data: unknown }
  | { kind: 'interrupted' };

/** What a finished prompt produced: the images of the output nodes in workflow order, or why it failed. */
export function promptOutcome(entry: HistoryEntry, outputNodes: string[]): PromptOutcome {
  if (entry.statusStr === 'error') {
    const error = entry.messages.find(([name]) => name === 'execution_error');
    if (error) return { kind: 'error', data: error[1] };
    if (entry.messages.some(([name]) => name === 'execution_interrupted')) return { kind: 'interrupted' };
    return { kind: 'error', data: {} };
  }
  const images: ImageRef[] = [];
  for (const id of outputNodes) {
    const node = entry.outputs[id];
    const list = isRecord(node) && Array.isArray(node.images) ? node.images : [];
    for (const item of list) {
      if (!isRecord(item) || typeof item.filename !== 'string' || item.filename === '') continue;
      images.push({
        filename: item.filename,
        subfolder: typeof item.subfolder === 'string' ? item.subfolder : '',
        type: typeof item.type === 'string' ? item.type : 'output',
      });
    }
  }
  return { kind: 'success', images };
}

/** Where a prompt is in `GET /queue` (items are `[number, prompt_id, prompt, extra_data, outputs]`). */
export function queuePosition(body: unknown, promptId: string): 'running' | 'pending' | undefined {
  if (!isRecord(body)) return undefined;
  const has = (list: unknown): boolean => Array.isArray(list) && list.some((item) => Array.isArray(item) && item[1] === promptId);
  if (has(body.queue_running)) return 'running';
  if (has(body.queue_pending)) return 'pending';
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------
// The adapter
// ---------------------------------------------------------------------------------------------------------

type PromptState = { kind: 'pending' } | { kind: 'running' } | { kind: 'done'; entry: HistoryEntry } | { kind: 'unknown' };

interface Tracked {
  id: string;
  finished: boolean;
  entry: HistoryEntry | undefined;
  percent: number;
  /** An event said it ended; the history may lag a moment behind it. */
  ended: boolean;
  /** The execution_error event, kept in case the history lacks it. */
  errorEvent: unknown;
}

interface Waker {
  notify(): void;
  wait(ms: number, signal: AbortSignal): Promise<void>;
}

function createWaker(): Waker {
  let pending = false;
  let wakeUp: (() => void) | undefined;
  return {
    notify() {
      pending = true;
      wakeUp?.();
    },
    wait(ms, signal) {
      if (pending) {
        pending = false;
        return Promise.resolve();
      }
      return new Promise<void>((resolve, reject) => {
        const done = (): void => {
          clearTimeout(timer);
          signal.removeEventListener('abort', onAbort);
          wakeUp = undefined;
          pending = false;
          resolve();
        };
        const onAbort = (): void => {
          clearTimeout(timer);
          wakeUp = undefined;
          reject(signal.reason);
        };
        const timer = setTimeout(done, ms);
        wakeUp = done;
        if (signal.aborted) onAbort();
        else signal.addEventListener('abort', onAbort, { once: true });
      });
    },
  };
}



/** ComfyUI's binary websocket events: a 4-byte big-endian event type, then its payload. */
const BINARY_EVENT_PREVIEW_IMAGE = 1;
/** A PREVIEW_IMAGE payload: a 4-byte big-endian image type, then the encoded image. */
const PREVIEW_IMAGE_TYPES: Record<number, string> = { 1: 'image/jpeg', 2: 'image/png' };

/** The image of a PREVIEW_IMAGE websocket message; undefined for other binary events and malformed ones. */
export function previewImageOf(message: Uint8Array): Uint8Array | undefined {
  if (message.length <= 8) return undefined;
  const view = new DataView(message.buffer, message.byteOffset, message.byteLength);
  if (view.getUint32(0) !== BINARY_EVENT_PREVIEW_IMAGE || PREVIEW_IMAGE_TYPES[view.getUint32(4)] === undefined) return undefined;
  return message.subarray(8);
}

/** Nothing listens on ComfyUI's port: the process is gone, and with it its in-memory queue. */
function isConnectionRefused(err: unknown): boolean {
  for (let e: unknown = err; e !== undefined && e !== null; e = (e as { cause?: unknown }).cause) {
    if ((e as { code?: unknown }).code === 'ECONNREFUSED') return true;
    if (typeof e !== 'object') break;
  }
  return false;
}

export function createComfyUIBackend(config: ComfyUIBackendConfig, deps: ComfyUIBackendDeps): ImageBackend {
  const now = deps.now ?? Date.now;
  const logger = deps.logger;
  const workflows = loadWorkflows(config, deps.cwd ?? process.cwd());
  const agent = new Agent({ connect: { timeout: config.connectTimeoutMs } });
  const liveSockets = new Set<WebSocket>();

  function fail(kind: BackendFailureKind, message: string, ctx: { url?: URL; status?: number; cause?: unknown; promptId?: string } = {}): never {
    const details: string[] = [];
    if (ctx.status !== undefined) details.push(`Status: ${ctx.status}`);
    if (ctx.url !== undefined) details.push(`URL: ${redactUrl(ctx.url)}`);
    if (ctx.promptId !== undefined) details.push(`Prompt-Id: ${ctx.promptId}`);
    throw new BackendError(config.id, kind, message, { status: ctx.status, details, cause: ctx.cause });
  }

  function urlOf(pathAndQuery: string): URL {
    return new URL(joinUrl(config.baseUrl, pathAndQuery));
  }

  function failTransport(err: unknown, signal: AbortSignal, url: URL): never {
    if (signal.aborted) throw signal.reason;
    const code = errorCode(err);
    if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
      fail('timeout', 'ComfyUI did not answer before the job deadline', { url, cause: err });
    }
    if (err instanceof TypeError || (code !== undefined && PROGRAMMING_ERROR_CODES.has(code))) throw err;
    const reason = err instanceof Error ? err.message : String(err);
    fail('unavailable', `ComfyUI unreachable: ${code !== undefined && !reason.includes(code) ? `${code} ` : ''}${reason}`, { url, cause: err });
  }

  interface SendInit {
    method: 'GET' | 'POST';
    json?: unknown;
    form?: FormData;
  }

  async function send(pathAndQuery: string, init: SendInit, signal: AbortSignal, deadlineMs: number | undefined): Promise<{ res: Dispatcher.ResponseData; url: URL }> {
    const url = urlOf(pathAndQuery);
    let timeouts: ReturnType<typeof requestTimeouts>;
    if (deadlineMs !== undefined) {
      timeouts = requestTimeouts(deadlineMs, now());
      if (timeouts === undefined) fail('timeout', 'the job deadline passed', { url });
    }
    const headers: Record<string, string> = { accept: 'application/json' };
    let body: string | FormData | undefined;
    if (init.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(init.json);
    } else if (init.form !== undefined) {
      body = init.form;
    }
    try {
      const res = await request(url, { dispatcher: agent, method: init.method, headers, body, signal, ...(timeouts ?? {}) });
      return { res, url };
    } catch (err) {
      failTransport(err, signal, url);
    }
  }

  async function readBody(res: Dispatcher.ResponseData, limit: number, signal: AbortSignal, url: URL): Promise<{ bytes: Buffer; overflow: boolean }> {
    const chunks: Buffer[] = [];
    let total = 0;
    try {
      for await (const chunk of res.body) {
        const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
        total += buf.length;
        if (total > limit) {
          res.body.destroy();
          return { bytes: Buffer.concat(chunks), overflow: true };
        }
        chunks.push(buf);
      }
    } catch (err) {
      failTransport(err, signal, url);
    }
    return { bytes: Buffer.concat(chunks), overflow: false };
  }

  async function readJson(res: Dispatcher.ResponseData, signal: AbortSignal, url: URL): Promise<unknown> {
    const { bytes, overflow } = await readBody(res, MAX_JSON_BYTES, signal, url);
    if (overflow) fail('bad_response', `ComfyUI answer is over ${MAX_JSON_BYTES} bytes`, { url, status: res.statusCode });
    try {
      return JSON.parse(bytes.toString('utf8'));
    } catch {
      fail('bad_response', 'ComfyUI answered with something that is not JSON', { url, status: res.statusCode });
    }
  }

  /** A non-2xx answer as the failure it means; `graph` names nodes in workflow rejections. */
  async function failStatus(res: Dispatcher.ResponseData, signal: AbortSignal, url: URL, graph?: ApiWorkflow): Promise<never> {
    const { bytes } = await readBody(res, MAX_ERROR_BODY_BYTES, signal, url);
    const text = bytes.toString('utf8');
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // aiohttp answers unknown routes and bare statuses in plain text ("404: Not Found").
    }
    const status = res.statusCode;
    const described = graph !== undefined ? describePromptError(parsed, graph) : describeErrorBody(parsed);
    const upstream = sanitizeUpstreamMessage(described ?? `HTTP ${status}`);
    if (status === 429 || status >= 500) fail('unavailable', `ComfyUI unavailable (HTTP ${status}): ${upstream}`, { url, status });
    if (status >= 400) fail('rejected', upstream, { url, status });
    fail('bad_response', `ComfyUI answered HTTP ${status}`, { url, status });
  }

  async function getJson(pathAndQuery: string, signal: AbortSignal, deadlineMs: number | undefined): Promise<unknown> {
    const { res, url } = await send(pathAndQuery, { method: 'GET' }, signal, deadlineMs);
    if (res.statusCode < 200 || res.statusCode >= 300) await failStatus(res, signal, url);
    return readJson(res, signal, url);
  }

  async function upload(bytes: Uint8Array, filename: string, mediaType: string, signal: AbortSignal, deadlineMs: number): Promise<UploadedFile> {
    const form = new FormData();
    form.append('image', new Blob([new Uint8Array(bytes)], { type: mediaType }), filename);
    form.append('type', 'input');
    form.append('subfolder', config.uploadSubfolder);
    // Names are content hashes, so overwriting never replaces a file with different bytes.
    form.append('overwrite', 'true');
    const { res, url } = await send('/upload/image', { method: 'POST', form }, signal, deadlineMs);
    if (res.statusCode < 200 || res.statusCode >= 300) await failStatus(res, signal, url);
    const body = await readJson(res, signal, url);
    if (!isRecord(body) || typeof body.name !== 'string' || body.name === '') {
      fail('bad_response', 'ComfyUI answered an upload without a file name', { url, status: res.statusCode });
    }
    return { name: body.name, subfolder: typeof body.subfolder === 'string' ? body.subfolder : config.uploadSubfolder };
  }

  const EXTENSIONS: Record<string, string> = { 'image/png': 'png', 'image/jpeg': 'jpg', 'image/webp': 'webp' };

  async function uploadInputs(
    options: BackendCallOptions,
    plan: CallPlan,
  ): Promise<{ images: UploadedFile[]; mask: UploadedFile | undefined }> {
    const { signal, deadlineMs } = options;
    const images: UploadedFile[] = [];
    for (const image of (options.images ?? []).slice(0, plan.imageCount)) {
      const bytes = await readFile(image.path);
      signal.throwIfAborted();
      images.push(await upload(bytes, `pixeld-${image.sha256.slice(0, 40)}.${EXTENSIONS[image.mediaType] ?? 'png'}`, image.mediaType, signal, deadlineMs));
    }
    let mask: UploadedFile | undefined;
    if (plan.mask !== 'none') {
      const first = options.images?.[0];
      const bytes =
        plan.mask === 'given' && options.mask !== undefined
          ? await toComfyMask(await readFile(options.mask.path))
          : await fullInpaintMask(first?.width ?? 64, first?.height ?? 64);
      signal.throwIfAborted();
      const hash = createHash('sha256').update(bytes).digest('hex').slice(0, 40);
      mask = await upload(bytes, `pixeld-mask-${hash}.png`, 'image/png', signal, deadlineMs);
    }
    return { images, mask };
  }

  /** Queues one prompt; resolves with the id ComfyUI filed it under. */
  async function submit(prompt: ApiWorkflow, promptId: string, clientId: string, options: BackendCallOptions): Promise<string> {
    const { signal, deadlineMs } = options;
    // ComfyUI renders previews only with a preview method: its --preview-method defaults to none, and each
    // prompt's extra_data.preview_method overrides it for that prompt ('auto': TAESD when installed, else
    // latent2rgb). Asked for only when someone streams the job: previews cost time on the GPU.
    const extra = options.onPartialImage ? { extra_data: { preview_method: 'auto' } } : {};
    const json = { prompt, client_id: clientId, prompt_id: promptId, ...extra };
    const { res, url } = await send('/prompt', { method: 'POST', json }, signal, deadlineMs);
    if (res.statusCode < 200 || res.statusCode >= 300) await failStatus(res, signal, url, prompt);
    const body = await readJson(res, signal, url);
    if (!isRecord(body) || typeof body.prompt_id !== 'string' || body.prompt_id === '') {
      fail('bad_response', 'ComfyUI accepted the prompt without a prompt_id', { url, promptId });
    }
    return body.prompt_id;
  }

  /** null: this ComfyUI has no `/api/jobs/{id}`, so state comes from `/history/{id}` + `/queue`. */
  let jobsApi: boolean | null = true;

  async function promptState(promptId: string, signal: AbortSignal, deadlineMs: number): Promise<PromptState> {
    const id = encodeURIComponent(promptId);
    if (jobsApi) {
      const { res, url } = await send(`/api/jobs/${id}`, { method: 'GET' }, signal, deadlineMs);
      if (res.statusCode === 200) {
        const job = await readJson(res, signal, url);
        const status = isRecord(job) ? job.status : undefined;
        if (status === 'pending') return { kind: 'pending' };
        if (status === 'in_progress') return { kind: 'running' };
        // completed | failed: the history holds the outputs and the error in the form read below.
      } else if (res.statusCode === 404) {
        const { bytes } = await readBody(res, MAX_ERROR_BODY_BYTES, signal, url);
        let json = true;
        try {
          JSON.parse(bytes.toString('utf8'));
        } catch {
          json = false;
        }
        // A JSON 404 is "no such job"; aiohttp's plain-text 404 means the route itself is missing.
        if (!json) {
          jobsApi = null;
          logger.info('ComfyUI has no /api/jobs; following prompts through /history and /queue', { backendId: config.id });
        }
      } else {
        await failStatus(res, signal, url);
      }
    }
    const history = async (): Promise<HistoryEntry | undefined> =>
      readHistoryEntry(await getJson(`/history/${id}`, signal, deadlineMs), promptId);
    const first = await history();
    if (first) return { kind: 'done', entry: first };
    const position = queuePosition(await getJson('/queue', signal, deadlineMs), promptId);
    if (position === 'running') return { kind: 'running' };
    if (position === 'pending') return { kind: 'pending' };
    // It may have finished between the two reads: history is written before the queue lets go of it.
    const second = await history();
    return second ? { kind: 'done', entry: second } : { kind: 'unknown' };
  }

  /** Best effort, with its own short timeout: the call's signal is usually the one that fired. */
  async function cancelPrompts(ids: string[]): Promise<void> {
    if (ids.length === 0) return;
    const signal = AbortSignal.timeout(CANCEL_TIMEOUT_MS);
    try {
      // Deleting first closes the race: a prompt deleted while pending can no longer start, and one that
      // was not pending is running or done, which the queue read below tells apart.
      const del = await send('/queue', { method: 'POST', json: { delete: ids } }, signal, undefined);
      await del.res.body.dump();
      const queue = await getJson('/queue', signal, undefined);
      for (const id of ids) {
        if (queuePosition(queue, id) !== 'running') continue;
        // Always with the prompt_id: a bare /interrupt stops whatever runs, possibly someone else's job.
        const int = await send('/interrupt', { method: 'POST', json: { prompt_id: id } }, signal, undefined);
        await int.res.body.dump();
        logger.info('interrupted ComfyUI prompt', { backendId: config.id, promptId: id });
      }
    } catch (err) {
      logger.warn('could not cancel ComfyUI prompts', { backendId: config.id, promptIds: ids, error: String((err as Error)?.message ?? err) });
    }
  }

  async function download(ref: ImageRef, signal: AbortSignal, deadlineMs: number): Promise<Uint8Array> {
    const query = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder, type: ref.type });
    const { res, url } = await send(`/view?${query.toString()}`, { method: 'GET' }, signal, deadlineMs);
    if (res.statusCode < 200 || res.statusCode >= 300) {
      await res.body.dump().catch(() => undefined);
      fail(res.statusCode >= 500 ? 'unavailable' : 'bad_response', `result image ${ref.filename} could not be downloaded (HTTP ${res.statusCode})`, {
        url,
        status: res.statusCode,
      });
    }
    const { bytes, overflow } = await readBody(res, config.maxDownloadBytes, signal, url);
    if (overflow) fail('bad_response', `result image ${ref.filename} is over maxDownloadBytes ${config.maxDownloadBytes}`, { url });
    if (bytes.length === 0) fail('bad_response', `result image ${ref.filename} is empty`, { url });
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length);
  }

  /**
   * The call's event socket. Events are hints: each one wakes the tracking loop, which takes its answer
   * from the HTTP state, so a socket that drops, lags or reconnects can never lose a result.
   */
  function openEvents(clientId: string, onMessage: (text: string) => void, onPreview: (image: Uint8Array) => void, onChange: () => void) {
    const wsUrl = urlOf(`/ws?clientId=${encodeURIComponent(clientId)}`);
    wsUrl.protocol = wsUrl.protocol === 'https:' ? 'wss:' : 'ws:';
    let socket: WebSocket | undefined;
    let isOpen = false;
    let closed = false;
    // A server that refuses upgrades (a proxy without websocket support) is asked again less and less often.
    let retryDelayMs = config.pollIntervalMs;
    let nextAttemptMs = 0;
    let settleFirst: (() => void) | undefined;
    const firstAttempt = new Promise<void>((resolve) => {
      settleFirst = resolve;
    });
    const connect = (): void => {
      if (closed || socket !== undefined || now() < nextAttemptMs) return;
      let ws: WebSocket;
      try {
        ws = new WebSocket(wsUrl, { dispatcher: agent });
        ws.binaryType = 'arraybuffer';
      } catch (err) {
        logger.warn('could not open the ComfyUI websocket', { backendId: config.id, error: String(err) });
        settleFirst?.();
        return;
      }
      socket = ws;
      liveSockets.add(ws);
      let opened = false;
      ws.addEventListener('open', () => {
        if (socket !== ws) return;
        opened = true;
        retryDelayMs = config.pollIntervalMs;
        isOpen = true;
        settleFirst?.();
        onChange();
      });
      ws.addEventListener('message', (event) => {
        if (typeof event.data === 'string') onMessage(event.data);
        else if (event.data instanceof ArrayBuffer) {
          const preview = previewImageOf(new Uint8Array(event.data));
          if (preview !== undefined) onPreview(preview);
        }
      });
      ws.addEventListener('error', () => undefined);
      ws.addEventListener('close', () => {
        liveSockets.delete(ws);
        if (socket !== ws) return;
        socket = undefined;
        isOpen = false;
        if (!opened) retryDelayMs = Math.min(retryDelayMs * 2, config.reconcileIntervalMs);
        nextAttemptMs = now() + (opened ? 0 : retryDelayMs);
        settleFirst?.();
        if (!closed) onChange();
      });
    };
    connect();
    return {
      get open(): boolean {
        return isOpen;
      },
      reconnect: connect,
      /** Resolves once the first connection opened or failed, or after `ms`: polling covers the rest. */
      async firstAttempt(ms: number, signal: AbortSignal): Promise<void> {
        let timer: NodeJS.Timeout | undefined;
        let onAbort: (() => void) | undefined;
        try {
          await Promise.race([
            firstAttempt,
            new Promise<void>((resolve) => (timer = setTimeout(resolve, ms))),
            new Promise<never>((_, reject) => {
              onAbort = () => reject(signal.reason);
              if (signal.aborted) onAbort();
              else signal.addEventListener('abort', onAbort, { once: true });
            }),
          ]);
        } finally {
          clearTimeout(timer);
          if (onAbort) signal.removeEventListener('abort', onAbort);
        }
      },
      close(): void {
        closed = true;
        const ws = socket;
        socket = undefined;
        isOpen = false;
        if (ws) {
          liveSockets.delete(ws);
          try {
            ws.close();
          } catch {
            // Closing a socket that is still connecting throws in some undici versions; it is dropped anyway.
          }
        }
      },
    };
  }

  async function track(tracked: Tracked[], events: ReturnType<typeof openEvents>, waker: Waker, options: BackendCallOptions, graph: ApiWorkflow): Promise<void> {
    const { signal, deadlineMs } = options;
    let wasOpen = events.open;
    let lastReconcileMs = now();
    while (tracked.some((t) => !t.finished)) {
      const open = events.open;
      const confirming = tracked.some((t) => !t.finished && t.ended);
      await waker.wait(open && !confirming ? config.reconcileIntervalMs : config.pollIntervalMs, signal);
      const openNow = events.open;
      if (!openNow) events.reconnect();
      const reopened = openNow && !wasOpen;
      wasOpen = openNow;
      const due = !openNow || reopened || now() - lastReconcileMs >= config.reconcileIntervalMs;
      const toCheck = tracked.filter((t) => !t.finished && (due || t.ended));
      if (toCheck.length === 0) continue;
      if (due) lastReconcileMs = now();
      for (const t of toCheck) {
        let state: PromptState;
        try {
          state = await promptState(t.id, signal, deadlineMs);
        } catch (err) {
          if (signal.aborted) throw signal.reason;
          if (!(err instanceof BackendError) || err.kind !== 'unavailable') throw err;
          if (isConnectionRefused(err)) {
            fail('unavailable', 'ComfyUI went away while running the prompt (connection refused); the prompt is lost with its queue', {
              promptId: t.id,
              cause: err,
            });
          }
          // A reset or a proxy's 502 while ComfyUI may still run the prompt: keep following it until the deadline.
          logger.warn('could not read ComfyUI prompt state; will try again', { backendId: config.id, promptId: t.id, error: err.message });
          continue;
        }
        if (state.kind === 'done') {
          t.finished = true;
          t.entry = state.entry;
          t.percent = 100;
        } else if (state.kind === 'unknown') {
          fail('unavailable', 'ComfyUI no longer knows the prompt (it was probably restarted); it is lost', { promptId: t.id });
        }
      }
      reportProgress(tracked, options);
      for (const t of tracked) {
        if (!t.finished || t.entry === undefined) continue;
        const outcome = promptOutcome(t.entry, []);
        if (outcome.kind === 'error') {
          const described = describeExecutionError(isRecord(outcome.data) && Object.keys(outcome.data).length > 0 ? outcome.data : t.errorEvent, graph);
          fail(described.outOfMemory ? 'unavailable' : 'rejected', sanitizeUpstreamMessage(described.message), { promptId: t.id });
        }
        if (outcome.kind === 'interrupted') {
          if (signal.aborted) throw signal.reason;
          // Someone else stopped it (the ComfyUI UI, or a client's bare /interrupt): the request itself is fine.
          fail('unavailable', 'ComfyUI interrupted the prompt (it was stopped outside pixeld)', { promptId: t.id });
        }
      }
    }
  }

  function reportProgress(tracked: Tracked[], options: BackendCallOptions): void {
    const total = tracked.reduce((sum, t) => sum + (t.finished ? 100 : t.percent), 0);
    options.onProgress(total / tracked.length);
  }

  function handleEvent(text: string, byId: Map<string, Tracked>, tracked: Tracked[], options: BackendCallOptions, waker: Waker): void {
    let message: unknown;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (!isRecord(message) || typeof message.type !== 'string' || !isRecord(message.data)) return;
    const data = message.data;
    const t = typeof data.prompt_id === 'string' ? byId.get(data.prompt_id) : undefined;
    if (t === undefined || t.finished) return;
    switch (message.type) {
      case 'progress': {
        const value = Number(data.value);
        const max = Number(data.max);
        if (Number.isFinite(value) && Number.isFinite(max) && max > 0) {
          // Workflows with several samplers restart the count; the runner keeps the highest value shown.
          t.percent = Math.max(0, Math.min(100, (100 * value) / max));
          reportProgress(tracked, options);
        }
        return;
      }
      case 'executing':
        // `node: null` is sent after the history is stored: the reliable end-of-prompt signal.
        if (data.node === null) {
          t.ended = true;
          waker.notify();
        }
        return;
      case 'execution_error':
        t.errorEvent = data;
        t.ended = true;
        waker.notify();
        return;
      case 'execution_success':
      case 'execution_interrupted':
        t.ended = true;
        waker.notify();
        return;
      default:
        // execution_start, execution_cached, executed, status: nothing the loop needs.
        return;
    }
  }

  async function generate(options: BackendCallOptions): Promise<BackendCallResult> {
    const { signal } = options;
    signal.throwIfAborted();
    const workflow = workflows.get(options.model);
    if (workflow === undefined) {
      fail('rejected', `no ComfyUI workflow is configured for model ${options.model} (backends.${config.id}.workflows)`);
    }
    let plan: CallPlan;
    try {
      plan = planCall(workflow, options);
    } catch (err) {
      if (err instanceof WorkflowCallError) fail('rejected', err.message);
      throw err;
    }
    if (requestTimeouts(options.deadlineMs, now()) === undefined) fail('timeout', 'the job deadline passed before the ComfyUI call');

    const uploads = await uploadInputs(options, plan);
    const clientId = `pixeld-${randomUUID()}`;
    const waker = createWaker();
    const tracked: Tracked[] = plan.prompts.map(() => ({
      id: randomUUID(),
      finished: false,
      entry: undefined,
      percent: 0,
      ended: false,
      errorEvent: undefined,
    }));
    const byId = new Map(tracked.map((t) => [t.id, t]));
    const events = openEvents(
      clientId,
      (text) => handleEvent(text, byId, tracked, options, waker),
      // Binary events name no prompt: ComfyUI sends them to the client of the prompt running, one of ours.
      (preview) => {
        if (tracked.some((t) => !t.finished)) options.onPartialImage?.(preview);
      },
      () => waker.notify(),
    );
    const submitted: string[] = [];
    let succeeded = false;
    try {
      // Events sent before the socket opens would be missed; polling would still find the result, later.
      await events.firstAttempt(Math.min(config.connectTimeoutMs, Math.max(0, options.deadlineMs - now())), signal);
      for (const [i, p] of plan.prompts.entries()) {
        const t = tracked[i]!;
        // Listed before sending: an abort mid-request may still leave the prompt queued.
        submitted.push(t.id);
        const filedAs = await submit(buildPrompt(workflow, options, p, uploads), t.id, clientId, options);
        if (filedAs !== t.id) {
          // ComfyUI before caller-chosen prompt_ids picks its own; follow that one.
          logger.debug('ComfyUI chose its own prompt_id', { backendId: config.id, sent: t.id, filedAs });
          byId.delete(t.id);
          submitted[submitted.length - 1] = filedAs;
          t.id = filedAs;
          byId.set(filedAs, t);
        }
      }
      logger.debug('ComfyUI prompts queued', { backendId: config.id, promptIds: submitted, socket: events.open });
      await track(tracked, events, waker, options, workflow.graph);

      const refs: ImageRef[] = [];
      for (const t of tracked) {
        const outcome = promptOutcome(t.entry!, workflow.outputs);
        if (outcome.kind !== 'success' || outcome.images.length === 0) {
          const nodes = workflow.outputs.map((id) => nodeLabel(id, undefined, workflow.graph)).join(', ');
          fail('bad_response', `ComfyUI finished the prompt without images from ${nodes}`, { promptId: t.id });
        }
        refs.push(...outcome.images);
      }
      const warnings = [...plan.warnings];
      let wanted = refs;
      if (refs.length > options.n) {
        warnings.push({ type: 'other', message: `the workflow produced ${refs.length} images for n=${options.n}; kept the first ${options.n}` });
        wanted = refs.slice(0, options.n);
      }
      const images: Uint8Array[] = [];
      for (const ref of wanted) images.push(await download(ref, signal, options.deadlineMs));
      succeeded = true;
      return { images, warnings, response: { timestampMs: now(), modelId: options.model } };
    } catch (err) {
      if (!succeeded) {
        // Whatever failed, unfinished prompts of this call would only burn GPU time for nobody.
        const unfinished = submitted.filter((id) => !byId.get(id)!.finished);
        await cancelPrompts(unfinished);
      }
      if (signal.aborted) throw signal.reason;
      throw err;
    } finally {
      events.close();
    }
  }

  async function checkHealth(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const { res, url } = await send(config.healthPath, { method: 'GET' }, signal, undefined);
    await res.body.dump().catch(() => undefined);
    if (res.statusCode < 200 || res.statusCode >= 300) fail('unavailable', `health check answered HTTP ${res.statusCode}`, { url, status: res.statusCode });
  }

  async function close(): Promise<void> {
    for (const ws of liveSockets) {
      try {
        ws.close();
      } catch {
        // Already closing.
      }
    }
    liveSockets.clear();
    await closeAgent(agent);
  }

  return {
    id: config.id,
    type: 'comfyui',
    maxImagesPerCall: config.maxImagesPerCall,
    rerunInterruptedJobs: config.rerunInterruptedJobs,
    generate,
    checkHealth,
    close,
  };
}
