import type { BackendCallOptions } from '../../src/backends/types.js';

/** A complete BackendCallOptions with every key present, as the runner builds them; override what a test needs. */
export function backendCallOptions(overrides: Partial<BackendCallOptions> = {}): BackendCallOptions {
  return {
    model: 'test-model',
    prompt: 'a lighthouse at dusk',
    n: 1,
    size: '64x64',
    seed: 42,
    quality: 'high',
    background: 'auto',
    outputFormat: 'png',
    negativePrompt: undefined,
    numInferenceSteps: undefined,
    guidanceScale: undefined,
    images: undefined,
    mask: undefined,
    signal: new AbortController().signal,
    deadlineMs: Date.now() + 60_000,
    onProgress: () => undefined,
    onPartialImage: undefined,
    ...overrides,
  };
}
