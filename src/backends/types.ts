/**
 * The one narrow interface every model backend implements. A backend makes exactly one upstream call per
 * `generate`; splitting n, topping up short answers, retries, deadlines and output normalisation live in
 * the runner. Images come back as raw bytes (png, jpeg or webp): they are hashed and signed as delivered.
 */

export type ImageSize = `${number}x${number}`;

export interface InputImage {
  /** Absolute path of the file holding the bytes exactly as the caller sent them. */
  path: string;
  mediaType: 'image/png' | 'image/jpeg' | 'image/webp';
  width: number;
  height: number;
  sha256: string;
}

/**
 * Every key is present; `undefined` means the caller did not ask. Backends handle each key on purpose and
 * report what they cannot honour as a warning rather than dropping it silently.
 */
export interface BackendCallOptions {
  /** The model name the backend knows. */
  model: string;
  prompt: string;
  /** Images wanted from this call, 1..maxImagesPerCall. */
  n: number;
  size: ImageSize;
  /** Seed of the first image; image i is expected to use seed + i. */
  seed: number;
  quality: 'low' | 'medium' | 'high';
  background: 'transparent' | 'opaque' | 'auto';
  outputFormat: 'png' | 'jpeg' | 'webp';
  negativePrompt: string | undefined;
  numInferenceSteps: number | undefined;
  guidanceScale: number | undefined;
  /** Edit inputs; undefined for text-to-image. The first image is the one the mask applies to. */
  images: InputImage[] | undefined;
  /** OpenAI convention: PNG, same size as images[0], alpha 0 = edit here. Adapters convert. */
  mask: InputImage | undefined;
  /** Aborted on cancel and when the deadline passes; backends must stop their upstream call. */
  signal: AbortSignal;
  /**
   * Progress of this call, 0–100, for backends that report it (ComfyUI, AUTOMATIC1111); others never
   * call it. The runner folds it into the job's progress shown to pollers.
   */
  onProgress: (percent: number) => void;
  /**
   * Set only when a streaming caller asked for partial images: then backends that can render previews
   * (ComfyUI's preview frames, AUTOMATIC1111's live previews) ask for them and hand each one over as it
   * arrives, png or jpeg bytes, after the onProgress that goes with it. Undefined: do not ask upstream for
   * previews at all, they cost GPU time. Others never call it; the runner decides which previews are sent.
   */
  onPartialImage: ((image: Uint8Array) => void) | undefined;
  /** Epoch ms after which the runner gives up; adapters set their socket timeouts from it. */
  deadlineMs: number;
}

export interface BackendWarning {
  type: 'unsupported' | 'other';
  feature?: string;
  message: string;
}

export interface BackendCallResult {
  images: Uint8Array[];
  warnings: BackendWarning[];
  response: {
    timestampMs: number;
    modelId: string;
    /** Upstream headers worth keeping in the job log (trace ids); never credentials. */
    headers?: Record<string, string>;
  };
}

export interface ImageBackend {
  readonly id: string;
  readonly type: string;
  readonly maxImagesPerCall: number;
  /** Whether a job this backend was running when the daemon died may simply be run again. */
  readonly rerunInterruptedJobs: boolean;
  generate(options: BackendCallOptions): Promise<BackendCallResult>;
  /** Resolves when the backend answers; rejects with the reason otherwise. */
  checkHealth(signal: AbortSignal): Promise<void>;
  close?(): Promise<void>;
}
