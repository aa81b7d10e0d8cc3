import type { JobParams } from '../../src/jobs/model.js';

/** A job's parameters as validation leaves them (every key present): a 64×64 PNG as b64_json, seed 1. */
export function jobParams(over: Partial<JobParams> = {}): JobParams {
  return {
    prompt: 'p',
    n: 1,
    size: '64x64',
    quality: 'high',
    responseFormat: 'b64_json',
    outputFormat: 'png',
    outputCompression: undefined,
    background: 'auto',
    seed: 1,
    negativePrompt: undefined,
    numInferenceSteps: undefined,
    guidanceScale: undefined,
    user: undefined,
    ...over,
  };
}
