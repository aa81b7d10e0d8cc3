/**
 * A fake ComfyUI for adapter tests: the HTTP routes and websocket events of the real server
 * (shared/spec/backends.md), one prompt executing at a time. `/prompt` validates the workflow the way
 * ComfyUI does (known node classes, required inputs, linked types, value lists, ranges, existing input
 * files) and answers its 400 shapes. Executing a prompt really evaluates the graph: the latent size comes
 * from EmptyLatentImage or the input image, pixels from the sampler's seed, and inpainting keeps the input
 * where the mask is black. Behaviour hooks drop sockets, kill the server, fail, hang or slow down on demand.
 * Like ComfyUI, it sends a binary preview frame after each sampler step's progress event when a preview
 * method is on: the server's (`--preview-method`, default none) or the prompt's `extra_data.preview_method`.
 */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import busboy from 'busboy';
import sharp from 'sharp';
import { colourForSeed } from './openai-compatible-server.js';

/**
 * The part of `ws` the fake uses, typed here so the fake does not depend on whether @types/ws is
 * installed (`ws` itself arrives as a dependency of other packages).
 */
interface WsSocket {
  readonly readyState: number;
  send(data: string | Buffer): void;
  terminate(): void;
  on(event: 'close', listener: () => void): void;
}
interface WsServer {
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, callback: (ws: WsSocket) => void): void;
  close(): void;
}
const { WebSocketServer } = createRequire(import.meta.url)('ws') as { WebSocketServer: new (options: { noServer: true }) => WsServer };
const WS_OPEN = 1;

export type ApiPrompt = Record<string, { class_type: string; inputs: Record<string, unknown>; _meta?: { title?: string } }>;

export interface FakeComfyUIOptions {
  /** Serve `GET /api/jobs/{id}` like ComfyUI since late 2025; false answers it like older versions (plain 404). @default true */
  jobsApi?: boolean;
  /** Files CheckpointLoaderSimple offers. @default DEFAULT_CHECKPOINTS */
  checkpoints?: string[];
  /** As `--preview-method`: the method of prompts that name none. @default 'none' */
  previewMethod?: PreviewMethod;
}

/** ComfyUI's LatentPreviewMethod values; `default`, an unknown value or none in extra_data means the server's. */
export type PreviewMethod = 'none' | 'auto' | 'latent2rgb' | 'taesd';
const PREVIEW_METHODS: readonly string[] = ['none', 'auto', 'latent2rgb', 'taesd'];

/** Binary websocket event PREVIEW_IMAGE, and its image type JPEG (ComfyUI's server.py BinaryEventTypes). */
const BINARY_PREVIEW_IMAGE = 1;
const PREVIEW_TYPE_JPEG = 1;

export interface FakeComfyBehaviour {
  /** Sampling time of one prompt. */
  runMs: number;
  /** Leave queued prompts pending (nothing starts). */
  paused: boolean;
  /** Close every websocket halfway through the next prompt (once). */
  dropSocketsMidJob: boolean;
  /** Answer websocket upgrades with 503. */
  refuseWebSockets: boolean;
  /** Halfway through the next prompt, close every connection and stop listening, like a crashed process. */
  dieMidJob: boolean;
  /** The next prompt fails halfway through its sampler with this exception (once). */
  executionError: { exceptionType: string; message: string } | undefined;
  /** Prompts start and never finish until interrupted. */
  hang: boolean;
  /** Every HTTP answer waits this long first. */
  responseDelayMs: number;
}

const DEFAULT_BEHAVIOUR: FakeComfyBehaviour = {
  runMs: 200,
  paused: false,
  dropSocketsMidJob: false,
  refuseWebSockets: false,
  dieMidJob: false,
  executionError: undefined,
  hang: false,
  responseDelayMs: 0,
};

export const DEFAULT_CHECKPOINTS = ['v1-5-pruned-emaonly.safetensors', 'sd-v1-5-inpainting.ckpt', 'sd_xl_base_1.0.safetensors'];

export interface RecordedRequest {
  method: string;
  /** Path with query string. */
  path: string;
  json?: unknown;
  fields?: Record<string, string>;
}

export interface StoredFile {
  type: string;
  subfolder: string;
  name: string;
  bytes: Buffer;
}

export interface QueuedPrompt {
  number: number;
  id: string;
  clientId: string | undefined;
  prompt: ApiPrompt;
  outputs: string[];
  /** extra_data as sent, which ComfyUI keeps with the prompt (plus client_id). */
  extraData: Record<string, unknown>;
  /** The preview method this prompt runs with. */
  previewMethod: PreviewMethod;
}

export interface SentPreview {
  clientId: string;
  promptId: string;
  /** The JPEG inside the binary message. */
  jpeg: Buffer;
}

export interface SocketEvent {
  clientId: string;
  type: string;
  data: Record<string, unknown>;
}

export interface FakeComfyUI {
  /** http://127.0.0.1:port */
  readonly url: string;
  readonly requests: RecordedRequest[];
  /** Every prompt accepted by POST /prompt, in order. */
  readonly prompts: QueuedPrompt[];
  /** Files written by /upload/image and by SaveImage, keyed `type/subfolder/name`. */
  readonly files: Map<string, StoredFile>;
  /** prompt_id of every POST /interrupt; undefined for a bare one (which stops whatever runs). */
  readonly interrupts: Array<string | undefined>;
  /** Ids named in POST /queue {"delete"}. */
  readonly deletes: string[];
  /** Websocket events sent, in order. */
  readonly events: SocketEvent[];
  /** Binary preview frames sent, in order. */
  readonly previews: SentPreview[];
  /** Websocket connections accepted so far. */
  readonly socketsOpened: () => number;
  setBehaviour(patch: Partial<FakeComfyBehaviour>): void;
  /** Resolves with the id of the next prompt that starts executing. */
  nextStart(): Promise<string>;
  /** Resolves with the id of the next prompt that ends (success, error or interruption). */
  nextEnd(): Promise<string>;
  /** The ids queued and not started, and the one running. */
  queueState(): { running: string | undefined; pending: string[] };
  close(): Promise<void>;
}

/** The colour the fake sampler paints for batch item `index` of a latent sampled with `seed`. */
export function fakeSampleColour(seed: number, index = 0): [number, number, number] {
  // ComfyUI derives a batch's noise from one seed, so items differ but none equals seed + index.
  return colourForSeed(index === 0 ? seed : (seed ^ Math.imul(index, 0x9e3779b1)) >>> 0);
}

// ---------------------------------------------------------------------------------------------------------
// Node classes: inputs as ComfyUI declares them, enough to validate and run the example workflows.
// ---------------------------------------------------------------------------------------------------------

type InputSpec =
  | { kind: 'INT'; min: number; max: number }
  | { kind: 'FLOAT'; min: number; max: number }
  | { kind: 'STRING' }
  | { kind: 'LIST'; values: (fake: FakeState) => string[] }
  | { kind: 'INPUT_FILE' }
  | { kind: 'LINK'; type: string };

interface NodeClass {
  required: Record<string, InputSpec>;
  outputs: string[];
  outputNode?: boolean;
}

const INT = (min: number, max: number): InputSpec => ({ kind: 'INT', min, max });
const FLOAT = (min: number, max: number): InputSpec => ({ kind: 'FLOAT', min, max });
const LINK = (type: string): InputSpec => ({ kind: 'LINK', type });
const STRING: InputSpec = { kind: 'STRING' };
const SAMPLERS = ['euler', 'euler_ancestral', 'dpmpp_2m', 'dpmpp_2m_sde', 'ddim'];
const SCHEDULERS = ['normal', 'karras', 'exponential', 'simple', 'sgm_uniform'];
const MAX_SEED = 0xffffffffffffffff;

const NODE_CLASSES: Record<string, NodeClass> = {
  CheckpointLoaderSimple: { required: { ckpt_name: { kind: 'LIST', values: (f) => f.checkpoints } }, outputs: ['MODEL', 'CLIP', 'VAE'] },
  CLIPTextEncode: { required: { text: STRING, clip: LINK('CLIP') }, outputs: ['CONDITIONING'] },
  EmptyLatentImage: { required: { width: INT(16, 16384), height: INT(16, 16384), batch_size: INT(1, 4096) }, outputs: ['LATENT'] },
  KSampler: {
    required: {
      model: LINK('MODEL'),
      seed: INT(0, MAX_SEED),
      steps: INT(1, 10000),
      cfg: FLOAT(0, 100),
      sampler_name: { kind: 'LIST', values: () => SAMPLERS },
      scheduler: { kind: 'LIST', values: () => SCHEDULERS },
      positive: LINK('CONDITIONING'),
      negative: LINK('CONDITIONING'),
      latent_image: LINK('LATENT'),
      denoise: FLOAT(0, 1),
    },
    outputs: ['LATENT'],
  },
  VAEDecode: { required: { samples: LINK('LATENT'), vae: LINK('VAE') }, outputs: ['IMAGE'] },
  VAEEncode: { required: { pixels: LINK('IMAGE'), vae: LINK('VAE') }, outputs: ['LATENT'] },
  VAEEncodeForInpaint: { required: { pixels: LINK('IMAGE'), vae: LINK('VAE'), mask: LINK('MASK'), grow_mask_by: INT(0, 64) }, outputs: ['LATENT'] },
  LoadImage: { required: { image: { kind: 'INPUT_FILE' } }, outputs: ['IMAGE', 'MASK'] },
  LoadImageMask: { required: { image: { kind: 'INPUT_FILE' }, channel: { kind: 'LIST', values: () => ['alpha', 'red', 'green', 'blue'] } }, outputs: ['MASK'] },
  SaveImage: { required: { images: LINK('IMAGE'), filename_prefix: STRING }, outputs: [], outputNode: true },
  PreviewImage: { required: { images: LINK('IMAGE') }, outputs: [], outputNode: true },
};

interface FakeState {
  checkpoints: string[];
  files: Map<string, StoredFile>;
}

interface NodeError {
  type: string;
  message: string;
  details: string;
  extra_info: Record<string, unknown>;
}

type Validation =
  | { ok: true; outputs: string[] }
  | { ok: false; status: 400; body: { error: NodeError; node_errors: Record<string, unknown> | [] } };

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function inputFileKey(value: string): string {
  const cut = value.lastIndexOf('/');
  return cut < 0 ? `input//${value}` : `input/${value.slice(0, cut)}/${value.slice(cut + 1)}`;
}

/** ComfyUI's `validate_prompt`: graph errors first, then each output's inputs, errors grouped per node. */
export function validatePrompt(prompt: unknown, state: FakeState): Validation {
  const error = (type: string, message: string, details = ''): NodeError => ({ type, message, details, extra_info: {} });
  if (!isRecord(prompt)) return { ok: false, status: 400, body: { error: error('invalid_prompt', 'Prompt is not a dict'), node_errors: [] } };
  for (const [id, node] of Object.entries(prompt)) {
    const classType = isRecord(node) ? node.class_type : undefined;
    if (typeof classType !== 'string') {
      return { ok: false, status: 400, body: { error: error('invalid_prompt', `Cannot execute because a node is missing the class_type property.`, `Node ID '#${id}'`), node_errors: [] } };
    }
    if (!(classType in NODE_CLASSES)) {
      return { ok: false, status: 400, body: { error: error('invalid_prompt', `Cannot execute because node ${classType} does not exist.`, `Node ID '#${id}'`), node_errors: [] } };
    }
  }
  const graph = prompt as ApiPrompt;
  const outputs = Object.keys(graph).filter((id) => NODE_CLASSES[graph[id]!.class_type]!.outputNode === true);
  if (outputs.length === 0) return { ok: false, status: 400, body: { error: error('prompt_no_outputs', 'Prompt has no outputs'), node_errors: [] } };

  const nodeErrors: Record<string, { errors: NodeError[]; dependent_outputs: string[]; class_type: string }> = {};
  const checked = new Map<string, NodeError[]>();
  const validateNode = (id: string, seen: Set<string>): boolean => {
    const done = checked.get(id);
    if (done) return done.length === 0;
    if (seen.has(id)) return true;
    seen.add(id);
    const node = graph[id]!;
    const spec = NODE_CLASSES[node.class_type]!;
    const errors: NodeError[] = [];
    let linkedOk = true;
    const inputs = isRecord(node.inputs) ? node.inputs : {};
    for (const [name, input] of Object.entries(spec.required)) {
      if (!(name in inputs)) {
        errors.push({ ...error('required_input_missing', 'Required input is missing', name), extra_info: { input_name: name } });
        continue;
      }
      const value = inputs[name];
      if (Array.isArray(value)) {
        const [from, index] = value as [unknown, unknown];
        const source = graph[String(from)];
        if (value.length !== 2 || source === undefined || typeof index !== 'number') {
          errors.push(error('bad_linked_input', 'Bad linked input, must be a length-2 list of [node_id, slot_index]', name));
          continue;
        }
        const received = NODE_CLASSES[source.class_type]!.outputs[index];
        if (input.kind !== 'LINK' || received !== input.type) {
          errors.push(error('return_type_mismatch', 'Return type mismatch between linked nodes', `${name}, received_type(${received ?? 'nothing'}) mismatch input_type(${input.kind === 'LINK' ? input.type : input.kind})`));
          continue;
        }
        if (!validateNode(String(from), seen)) linkedOk = false;
        continue;
      }
      switch (input.kind) {
        case 'LINK':
          errors.push(error('return_type_mismatch', 'Return type mismatch between linked nodes', `${name}, received_type(literal) mismatch input_type(${input.type})`));
          break;
        case 'INT':
        case 'FLOAT': {
          const n = typeof value === 'number' ? value : Number.NaN;
          if (!Number.isFinite(n) || (input.kind === 'INT' && !Number.isInteger(n))) {
            errors.push(error('invalid_input_type', `Failed to convert an input value to a ${input.kind} value`, `${name}, ${String(value)}`));
          } else if (n < input.min) {
            errors.push(error('value_smaller_than_min', `Value ${n} smaller than min of ${input.min}`, name));
          } else if (n > input.max) {
            errors.push(error('value_bigger_than_max', `Value ${n} bigger than max of ${input.max}`, name));
          }
          break;
        }
        case 'STRING':
          if (typeof value !== 'string') errors.push(error('invalid_input_type', 'Failed to convert an input value to a STRING value', `${name}, ${String(value)}`));
          break;
        case 'LIST': {
          const values = input.values(state);
          if (typeof value !== 'string' || !values.includes(value)) {
            errors.push({ ...error('value_not_in_list', 'Value not in list', `${name}: '${String(value)}' not in ${JSON.stringify(values)}`), extra_info: { input_name: name, received_value: value } });
          }
          break;
        }
        case 'INPUT_FILE':
          if (typeof value !== 'string' || !state.files.has(inputFileKey(value))) {
            errors.push(error('custom_validation_failed', 'Custom validation failed for node', `${name} - Invalid image file: ${String(value)}`));
          }
          break;
      }
    }
    checked.set(id, errors);
    if (errors.length > 0) nodeErrors[id] = { errors, dependent_outputs: [], class_type: node.class_type };
    return errors.length === 0 && linkedOk;
  };
  const good: string[] = [];
  for (const out of outputs) {
    if (validateNode(out, new Set())) good.push(out);
    else for (const entry of Object.values(nodeErrors)) if (!entry.dependent_outputs.includes(out)) entry.dependent_outputs.push(out);
  }
  if (good.length === 0 || Object.keys(nodeErrors).length > 0) {
    return {
      ok: false,
      status: 400,
      body: { error: error('prompt_outputs_failed_validation', 'Prompt outputs failed validation'), node_errors: nodeErrors },
    };
  }
  return { ok: true, outputs: good };
}

// ---------------------------------------------------------------------------------------------------------
// Graph evaluation
// ---------------------------------------------------------------------------------------------------------

interface RawImage {
  width: number;
  height: number;
  /** RGB, row-major. */
  data: Buffer;
}
interface RawMask {
  width: number;
  height: number;
  /** 0..1 per pixel; 1 = inpaint. */
  data: Float32Array;
}
type Value =
  | { kind: 'token' }
  | { kind: 'CONDITIONING'; text: string }
  | { kind: 'LATENT'; width: number; height: number; batch: number; base: RawImage[] | undefined; mask: RawMask | undefined; seed: number | undefined }
  | { kind: 'IMAGE'; images: RawImage[] }
  | { kind: 'MASK'; mask: RawMask };

/** A node failed while executing, as ComfyUI reports it in execution_error. */
class NodeExecutionError extends Error {
  constructor(
    readonly nodeId: string,
    readonly nodeType: string,
    readonly exceptionType: string,
    message: string,
  ) {
    super(message);
  }
}

async function decodeRgb(bytes: Buffer): Promise<RawImage> {
  const { data, info } = await sharp(bytes).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  return { width: info.width, height: info.height, data };
}

async function decodeChannel(bytes: Buffer, channel: 'red' | 'green' | 'blue' | 'alpha'): Promise<RawMask> {
  // LoadImageMask converts anything that is not RGBA to RGBA first: gray becomes R = G = B, opaque alpha.
  const { data, info } = await sharp(bytes).toColourspace('srgb').ensureAlpha().raw().toBuffer({ resolveWithObject: true });
  const offset = { red: 0, green: 1, blue: 2, alpha: 3 }[channel];
  const out = new Float32Array(info.width * info.height);
  for (let i = 0; i < out.length; i += 1) {
    const v = data[i * info.channels + offset]! / 255;
    // ComfyUI inverts the alpha channel: transparent means "mask here".
    out[i] = channel === 'alpha' ? 1 - v : v;
  }
  return { width: info.width, height: info.height, data: out };
}

function samplePixels(latent: Extract<Value, { kind: 'LATENT' }>): RawImage[] {
  const seed = latent.seed ?? 0;
  const images: RawImage[] = [];
  for (let b = 0; b < latent.batch; b += 1) {
    const [r, g, bl] = fakeSampleColour(seed, b);
    const base = latent.base?.[Math.min(b, latent.base.length - 1)];
    const width = base?.width ?? latent.width;
    const height = base?.height ?? latent.height;
    const data = Buffer.alloc(width * height * 3);
    for (let p = 0; p < width * height; p += 1) {
      let inpaint = true;
      if (base && latent.mask) {
        const mx = Math.min(latent.mask.width - 1, Math.floor(((p % width) * latent.mask.width) / width));
        const my = Math.min(latent.mask.height - 1, Math.floor((Math.floor(p / width) * latent.mask.height) / height));
        inpaint = latent.mask.data[my * latent.mask.width + mx]! >= 0.5;
      }
      if (inpaint) {
        data[p * 3] = r;
        data[p * 3 + 1] = g;
        data[p * 3 + 2] = bl;
      } else {
        base!.data.copy(data, p * 3, p * 3, p * 3 + 3);
      }
    }
    images.push({ width, height, data });
  }
  return images;
}

// ---------------------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------------------

interface HistoryItem {
  prompt: [number, string, ApiPrompt, Record<string, unknown>, string[]];
  outputs: Record<string, { images: Array<{ filename: string; subfolder: string; type: string }> }>;
  status: { status_str: 'success' | 'error'; completed: boolean; messages: Array<[string, Record<string, unknown>]> };
  meta: Record<string, unknown>;
}

interface Running {
  prompt: QueuedPrompt;
  interrupted: boolean;
  wake: () => void;
}

export async function startFakeComfyUI(options: FakeComfyUIOptions = {}): Promise<FakeComfyUI> {
  const jobsApi = options.jobsApi ?? true;
  const state: FakeState = { checkpoints: options.checkpoints ?? DEFAULT_CHECKPOINTS, files: new Map() };
  const requests: RecordedRequest[] = [];
  const prompts: QueuedPrompt[] = [];
  const interrupts: Array<string | undefined> = [];
  const deletes: string[] = [];
  const events: SocketEvent[] = [];
  const previews: SentPreview[] = [];
  const serverPreviewMethod = options.previewMethod ?? 'none';
  const pending: QueuedPrompt[] = [];
  const history = new Map<string, HistoryItem>();
  const sockets = new Map<string, WsSocket>();
  const startWaiters: Array<(id: string) => void> = [];
  const endWaiters: Array<(id: string) => void> = [];
  let behaviour: FakeComfyBehaviour = { ...DEFAULT_BEHAVIOUR };
  let running: Running | undefined;
  let number = 0;
  let saveCounter = 0;
  let socketsOpened = 0;
  let dead = false;

  const wss = new WebSocketServer({ noServer: true });

  function send(clientId: string | undefined, type: string, data: Record<string, unknown>): void {
    if (clientId === undefined) return;
    events.push({ clientId, type, data });
    const ws = sockets.get(clientId);
    if (ws && ws.readyState === WS_OPEN) ws.send(JSON.stringify({ type, data }));
  }

  /** A latent2rgb-like preview: latent-sized (1/8 of the picture), the step's share of the way to its colour. */
  async function sendPreview(p: QueuedPrompt, sampler: ApiPrompt[string], step: number, steps: number): Promise<void> {
    if (p.clientId === undefined || p.previewMethod === 'none') return;
    const latent = Object.values(p.prompt).find((node) => node.class_type === 'EmptyLatentImage');
    const width = Math.max(8, Math.floor(Number(latent?.inputs.width ?? 512) / 8));
    const height = Math.max(8, Math.floor(Number(latent?.inputs.height ?? 512) / 8));
    const [r, g, b] = fakeSampleColour(Number(sampler.inputs.seed) >>> 0).map((c) => Math.round((c * step) / steps));
    const jpeg = await sharp({ create: { width, height, channels: 3, background: { r: r!, g: g!, b: b! } } }).jpeg().toBuffer();
    const header = Buffer.alloc(8);
    header.writeUInt32BE(BINARY_PREVIEW_IMAGE, 0);
    header.writeUInt32BE(PREVIEW_TYPE_JPEG, 4);
    previews.push({ clientId: p.clientId, promptId: p.id, jpeg });
    const ws = sockets.get(p.clientId);
    if (ws && ws.readyState === WS_OPEN) ws.send(Buffer.concat([header, jpeg]));
  }

  function queueInfo(): Record<string, unknown> {
    return { exec_info: { queue_remaining: pending.length + (running ? 1 : 0) } };
  }

  function queueItem(p: QueuedPrompt): [number, string, ApiPrompt, Record<string, unknown>, string[]] {
    return [p.number, p.id, p.prompt, { ...p.extraData, ...(p.clientId !== undefined ? { client_id: p.clientId } : {}) }, p.outputs];
  }

  function killSockets(): void {
    for (const ws of sockets.values()) ws.terminate();
    sockets.clear();
  }

  function die(): void {
    if (dead) return;
    dead = true;
    killSockets();
    server.close();
    server.closeAllConnections();
    if (running) {
      running.interrupted = true;
      running.wake();
    }
  }

  /** Sleeps, but wakes at once when the running prompt is interrupted or the server dies. */
  function pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        if (running) running.wake = () => undefined;
        resolve();
      }
      if (running) running.wake = done;
    });
  }

  function topoOrder(graph: ApiPrompt, outputs: string[]): string[] {
    const order: string[] = [];
    const seen = new Set<string>();
    const visit = (id: string): void => {
      if (seen.has(id)) return;
      seen.add(id);
      for (const value of Object.values(graph[id]!.inputs)) if (Array.isArray(value)) visit(String(value[0]));
      order.push(id);
    };
    outputs.forEach(visit);
    return order;
  }

  async function evaluate(graph: ApiPrompt, order: string[]): Promise<HistoryItem['outputs']> {
    const values = new Map<string, Value[]>();
    const input = (id: string, name: string): Value => {
      const link = graph[id]!.inputs[name] as [string, number];
      return values.get(String(link[0]))![link[1]]!;
    };
    const outputs: HistoryItem['outputs'] = {};
    for (const id of order) {
      const node = graph[id]!;
      const v = node.inputs;
      switch (node.class_type) {
        case 'CheckpointLoaderSimple':
          values.set(id, [{ kind: 'token' }, { kind: 'token' }, { kind: 'token' }]);
          break;
        case 'CLIPTextEncode':
          values.set(id, [{ kind: 'CONDITIONING', text: String(v.text) }]);
          break;
        case 'EmptyLatentImage':
          values.set(id, [{ kind: 'LATENT', width: v.width as number, height: v.height as number, batch: v.batch_size as number, base: undefined, mask: undefined, seed: undefined }]);
          break;
        case 'LoadImage': {
          const file = state.files.get(inputFileKey(String(v.image)))!;
          const image = await decodeRgb(file.bytes);
          values.set(id, [{ kind: 'IMAGE', images: [image] }, { kind: 'MASK', mask: await decodeChannel(file.bytes, 'alpha') }]);
          break;
        }
        case 'LoadImageMask': {
          const file = state.files.get(inputFileKey(String(v.image)))!;
          values.set(id, [{ kind: 'MASK', mask: await decodeChannel(file.bytes, v.channel as 'red') }]);
          break;
        }
        case 'VAEEncode':
        case 'VAEEncodeForInpaint': {
          const pixels = input(id, 'pixels') as Extract<Value, { kind: 'IMAGE' }>;
          const first = pixels.images[0]!;
          const mask = node.class_type === 'VAEEncodeForInpaint' ? (input(id, 'mask') as Extract<Value, { kind: 'MASK' }>).mask : undefined;
          if (mask && (mask.width !== first.width || mask.height !== first.height)) {
            throw new NodeExecutionError(id, node.class_type, 'RuntimeError', `mask ${mask.width}x${mask.height} does not match image ${first.width}x${first.height}`);
          }
          values.set(id, [{ kind: 'LATENT', width: first.width, height: first.height, batch: pixels.images.length, base: pixels.images, mask, seed: undefined }]);
          break;
        }
        case 'KSampler': {
          const latent = input(id, 'latent_image') as Extract<Value, { kind: 'LATENT' }>;
          values.set(id, [{ ...latent, seed: v.seed as number }]);
          break;
        }
        case 'VAEDecode':
          values.set(id, [{ kind: 'IMAGE', images: samplePixels(input(id, 'samples') as Extract<Value, { kind: 'LATENT' }>) }]);
          break;
        case 'SaveImage':
        case 'PreviewImage': {
          const images = (input(id, 'images') as Extract<Value, { kind: 'IMAGE' }>).images;
          const type = node.class_type === 'SaveImage' ? 'output' : 'temp';
          const prefix = node.class_type === 'SaveImage' ? String(v.filename_prefix) : 'ComfyUI_temp';
          const cut = prefix.lastIndexOf('/');
          const subfolder = cut < 0 ? '' : prefix.slice(0, cut);
          const base = cut < 0 ? prefix : prefix.slice(cut + 1);
          const list: Array<{ filename: string; subfolder: string; type: string }> = [];
          for (const image of images) {
            saveCounter += 1;
            const filename = `${base}_${String(saveCounter).padStart(5, '0')}_.png`;
            const bytes = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } }).png().toBuffer();
            state.files.set(`${type}/${subfolder}/${filename}`, { type, subfolder, name: filename, bytes });
            list.push({ filename, subfolder, type });
          }
          outputs[id] = { images: list };
          values.set(id, []);
          break;
        }
        default:
          throw new NodeExecutionError(id, node.class_type, 'NotImplementedError', `the fake cannot run ${node.class_type}`);
      }
    }
    return outputs;
  }

  async function execute(p: QueuedPrompt): Promise<void> {
    const run: Running = { prompt: p, interrupted: false, wake: () => undefined };
    running = run;
    const stamp = (): number => Date.now();
    const messages: HistoryItem['status']['messages'] = [];
    const emit = (type: string, data: Record<string, unknown>, keep = false): void => {
      if (keep) messages.push([type, data]);
      send(p.clientId, type, data);
    };
    const finish = (outputs: HistoryItem['outputs'], status: 'success' | 'error'): void => {
      history.set(p.id, { prompt: queueItem(p), outputs, status: { status_str: status, completed: status === 'success', messages }, meta: {} });
    };
    for (const resolve of startWaiters.splice(0)) resolve(p.id);
    emit('execution_start', { prompt_id: p.id, timestamp: stamp() }, true);
    emit('execution_cached', { nodes: [], prompt_id: p.id, timestamp: stamp() }, true);
    const order = topoOrder(p.prompt, p.outputs);
    const executed: string[] = [];
    let failure: NodeExecutionError | undefined;
    let outputs: HistoryItem['outputs'] = {};
    for (const id of order) {
      if (run.interrupted) break;
      const node = p.prompt[id]!;
      emit('executing', { node: id, display_node: id, prompt_id: p.id });
      if (node.class_type === 'KSampler') {
        const steps = Math.max(1, Math.min(Number(node.inputs.steps), 50));
        for (let step = 1; step <= steps && !run.interrupted; step += 1) {
          await pause(behaviour.runMs / steps);
          if (dead || run.interrupted) break;
          if (step === Math.ceil(steps / 2)) {
            if (behaviour.dieMidJob) {
              behaviour.dieMidJob = false;
              die();
              break;
            }
            if (behaviour.dropSocketsMidJob) {
              behaviour.dropSocketsMidJob = false;
              killSockets();
            }
            if (behaviour.executionError) {
              const e = behaviour.executionError;
              behaviour.executionError = undefined;
              failure = new NodeExecutionError(id, node.class_type, e.exceptionType, e.message);
              break;
            }
          }
          emit('progress', { value: step, max: steps, prompt_id: p.id, node: id });
          await sendPreview(p, node, step, steps);
        }
        while (behaviour.hang && !run.interrupted && !dead) await pause(50);
        if (failure || run.interrupted) break;
      }
      if (dead) return;
      executed.push(id);
    }
    if (dead) return;
    if (!failure && !run.interrupted) {
      try {
        outputs = await evaluate(p.prompt, order);
      } catch (err) {
        if (!(err instanceof NodeExecutionError)) throw err;
        failure = err;
      }
    }
    if (failure) {
      emit(
        'execution_error',
        {
          prompt_id: p.id,
          node_id: failure.nodeId,
          node_type: failure.nodeType,
          executed,
          exception_message: failure.message,
          exception_type: failure.exceptionType,
          traceback: ['  File "/opt/ComfyUI/execution.py", line 496, in execute\n'],
          current_inputs: {},
          current_outputs: {},
          timestamp: stamp(),
        },
        true,
      );
      finish({}, 'error');
    } else if (run.interrupted) {
      const current = order.find((id) => !executed.includes(id));
      emit('execution_interrupted', { prompt_id: p.id, node_id: current, node_type: current ? p.prompt[current]!.class_type : undefined, executed, timestamp: stamp() }, true);
      finish({}, 'error');
    } else {
      for (const [id, out] of Object.entries(outputs)) emit('executed', { node: id, display_node: id, output: out, prompt_id: p.id });
      emit('execution_success', { prompt_id: p.id, timestamp: stamp() }, true);
      // Like ComfyUI: the history is written after execution_success, and `executing: null` follows it.
      await new Promise((r) => setTimeout(r, 5));
      finish(outputs, 'success');
    }
    send(p.clientId, 'executing', { node: null, prompt_id: p.id });
    for (const resolve of endWaiters.splice(0)) resolve(p.id);
  }

  function pump(): void {
    if (running || behaviour.paused || dead) return;
    const next = pending.shift();
    if (!next) return;
    void execute(next)
      .catch((err: unknown) => {
        // A bug in the fake must be loud in the test output, not a silent hang.
        console.error('fake ComfyUI execution crashed', err);
      })
      .finally(() => {
        running = undefined;
        pump();
      });
  }

  function json(res: ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  function plain(res: ServerResponse, status: number, text: string): void {
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  async function readJsonBody(req: IncomingMessage, record: RecordedRequest): Promise<unknown> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    if (text === '') return {};
    try {
      record.json = JSON.parse(text);
    } catch {
      record.json = undefined;
      return undefined;
    }
    return record.json;
  }

  async function readUpload(req: IncomingMessage, record: RecordedRequest): Promise<{ fields: Record<string, string>; file: { filename: string; bytes: Buffer } | undefined }> {
    const fields: Record<string, string> = {};
    let file: { filename: string; bytes: Buffer } | undefined;
    await new Promise<void>((resolve, reject) => {
      const parser = busboy({ headers: req.headers });
      parser.on('field', (name, value) => {
        fields[name] = value;
      });
      parser.on('file', (name, stream, info) => {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => {
          if (name === 'image') file = { filename: info.filename ?? '', bytes: Buffer.concat(chunks) };
        });
      });
      parser.on('close', () => resolve());
      parser.on('error', reject);
      req.pipe(parser);
    });
    record.fields = fields;
    return { fields, file };
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const record: RecordedRequest = { method: req.method ?? 'GET', path: req.url ?? '/' };
    requests.push(record);
    if (behaviour.responseDelayMs > 0) await new Promise((r) => setTimeout(r, behaviour.responseDelayMs));
    const url = new URL(req.url ?? '/', 'http://fake');
    // ComfyUI serves every route with and without the /api prefix.
    const route = url.pathname.startsWith('/api/') && !url.pathname.startsWith('/api/jobs') ? url.pathname.slice(4) : url.pathname;
    const method = req.method ?? 'GET';

    if (method === 'GET' && route === '/system_stats') {
      return json(res, 200, { system: { os: 'posix', comfyui_version: '0.3.99-fake', python_version: '3.12' }, devices: [{ name: 'fake', type: 'cpu', index: 0 }] });
    }
    if (method === 'POST' && route === '/upload/image') {
      const { fields, file } = await readUpload(req, record);
      if (!file || file.filename === '') return plain(res, 400, '400: Bad Request');
      const type = fields.type ?? 'input';
      const subfolder = fields.subfolder ?? '';
      let name = file.filename;
      if (fields.overwrite !== 'true' && fields.overwrite !== '1') {
        const dot = name.lastIndexOf('.');
        for (let i = 1; state.files.has(`${type}/${subfolder}/${name}`); i += 1) {
          name = dot < 0 ? `${file.filename} (${i})` : `${file.filename.slice(0, dot)} (${i})${file.filename.slice(dot)}`;
        }
      }
      state.files.set(`${type}/${subfolder}/${name}`, { type, subfolder, name, bytes: file.bytes });
      return json(res, 200, { name, subfolder, type });
    }
    if (method === 'POST' && route === '/prompt') {
      const body = await readJsonBody(req, record);
      if (!isRecord(body) || !('prompt' in body)) return json(res, 400, { error: { type: 'no_prompt', message: 'No prompt provided', details: 'No prompt provided', extra_info: {} }, node_errors: [] });
      const checked = validatePrompt(body.prompt, state);
      if (!checked.ok) return json(res, checked.status, checked.body);
      const id = typeof body.prompt_id === 'string' && body.prompt_id !== '' ? body.prompt_id : randomUUID();
      number += 1;
      const extraData = isRecord(body.extra_data) ? body.extra_data : {};
      const asked = extraData.preview_method;
      const queued: QueuedPrompt = {
        number,
        id,
        clientId: typeof body.client_id === 'string' ? body.client_id : undefined,
        prompt: body.prompt as ApiPrompt,
        outputs: checked.outputs,
        extraData,
        previewMethod: typeof asked === 'string' && PREVIEW_METHODS.includes(asked) ? (asked as PreviewMethod) : serverPreviewMethod,
      };
      prompts.push(queued);
      pending.push(queued);
      json(res, 200, { prompt_id: id, number, node_errors: {} });
      pump();
      return;
    }
    if (method === 'GET' && route === '/queue') {
      return json(res, 200, { queue_running: running ? [queueItem(running.prompt)] : [], queue_pending: pending.map(queueItem) });
    }
    if (method === 'POST' && route === '/queue') {
      const body = await readJsonBody(req, record);
      if (isRecord(body) && Array.isArray(body.delete)) {
        for (const id of body.delete) {
          deletes.push(String(id));
          const at = pending.findIndex((p) => p.id === id);
          if (at >= 0) pending.splice(at, 1);
        }
      }
      if (isRecord(body) && body.clear === true) pending.length = 0;
      res.writeHead(200).end();
      return;
    }
    if (method === 'POST' && route === '/interrupt') {
      const body = await readJsonBody(req, record);
      const target = isRecord(body) && typeof body.prompt_id === 'string' ? body.prompt_id : undefined;
      interrupts.push(target);
      // With a prompt_id only that prompt stops; without one whatever runs stops (the danger the adapter avoids).
      if (running && (target === undefined || running.prompt.id === target)) {
        running.interrupted = true;
        running.wake();
      }
      res.writeHead(200).end();
      return;
    }
    const historyMatch = /^\/history\/(.+)$/.exec(route);
    if (method === 'GET' && historyMatch) {
      const id = decodeURIComponent(historyMatch[1]!);
      const item = history.get(id);
      return json(res, 200, item ? { [id]: item } : {});
    }
    if (method === 'GET' && route === '/history') {
      return json(res, 200, Object.fromEntries(history));
    }
    const jobMatch = /^\/api\/jobs\/(.+)$/.exec(url.pathname);
    if (method === 'GET' && jobMatch) {
      if (!jobsApi) return plain(res, 404, '404: Not Found');
      const id = decodeURIComponent(jobMatch[1]!);
      const item = history.get(id);
      if (item) {
        return json(res, 200, {
          id,
          status: item.status.status_str === 'success' ? 'completed' : 'failed',
          priority: item.prompt[0],
          outputs: item.outputs,
          execution_status: item.status,
        });
      }
      if (running?.prompt.id === id) return json(res, 200, { id, status: 'in_progress', priority: running.prompt.number, outputs_count: 0 });
      const queued = pending.find((p) => p.id === id);
      if (queued) return json(res, 200, { id, status: 'pending', priority: queued.number, outputs_count: 0 });
      return json(res, 404, { error: 'Job not found' });
    }
    if (method === 'GET' && route === '/view') {
      const filename = url.searchParams.get('filename') ?? '';
      if (filename === '' || filename.startsWith('/') || filename.includes('..')) return plain(res, 400, '400: Bad Request');
      const type = url.searchParams.get('type') ?? 'output';
      const subfolder = url.searchParams.get('subfolder') ?? '';
      const file = state.files.get(`${type}/${subfolder}/${filename}`);
      if (!file) return plain(res, 404, '404: Not Found');
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': file.bytes.length, 'content-disposition': `filename="${filename}"` });
      res.end(file.bytes);
      return;
    }
    return plain(res, 404, '404: Not Found');
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent && !res.destroyed) plain(res, 500, `500 Internal Server Error: ${String(err)}`);
    });
  });

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const url = new URL(req.url ?? '/', 'http://fake');
    requests.push({ method: 'UPGRADE', path: req.url ?? '/' });
    if (url.pathname !== '/ws' || behaviour.refuseWebSockets || dead) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const sid = url.searchParams.get('clientId') || randomUUID().replace(/-/g, '');
      sockets.get(sid)?.terminate();
      sockets.set(sid, ws);
      socketsOpened += 1;
      ws.on('close', () => {
        if (sockets.get(sid) === ws) sockets.delete(sid);
      });
      ws.send(JSON.stringify({ type: 'status', data: { status: queueInfo(), sid } }));
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    prompts,
    files: state.files,
    interrupts,
    deletes,
    events,
    previews,
    socketsOpened: () => socketsOpened,
    setBehaviour(patch) {
      behaviour = { ...behaviour, ...patch };
      pump();
    },
    nextStart() {
      return new Promise((resolve) => startWaiters.push(resolve));
    },
    nextEnd() {
      return new Promise((resolve) => endWaiters.push(resolve));
    },
    queueState() {
      return { running: running?.prompt.id, pending: pending.map((p) => p.id) };
    },
    async close() {
      wss.close();
      if (dead) return;
      const closed = new Promise<void>((resolve) => server.once('close', () => resolve()));
      die();
      await closed;
    },
  };
}
