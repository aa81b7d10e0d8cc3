import type { OpenAIBackendConfig } from '../config/schema.js';

/**
 * What each OpenAI-compatible server does, as the `flavor` key's defaults (shared/spec/backends.md). A key
 * set in the config wins over its flavor's default, so a server that differs from its family's habit can
 * still be described exactly.
 */

export interface OpenAIServerHabits {
  editPath: '/images/edits' | '/images/inpainting';
  editImageField: 'image[]' | 'image';
  editMaskField: 'mask' | 'mask_image';
  maskConvention: 'openai-alpha' | 'white-inpaint' | 'ignored';
  seedPerImage: boolean;
  negativePrompt: 'field' | 'prompt-pipe';
  sendExtensions: boolean;
  requestB64: boolean;
}

export const FLAVOR_HABITS: Record<OpenAIBackendConfig['flavor'], OpenAIServerHabits> = {
  // OpenAI's API with the open-model extension fields, each image its own seed.
  generic: {
    editPath: '/images/edits',
    editImageField: 'image[]',
    editMaskField: 'mask',
    maskConvention: 'openai-alpha',
    seedPerImage: true,
    negativePrompt: 'field',
    sendExtensions: true,
    requestB64: true,
  },
  // OpenAI itself: unknown fields are refused (no seed, no negative prompt), gpt-image refuses response_format.
  openai: {
    editPath: '/images/edits',
    editImageField: 'image[]',
    editMaskField: 'mask',
    maskConvention: 'openai-alpha',
    seedPerImage: true,
    negativePrompt: 'field',
    sendExtensions: false,
    requestB64: false,
  },
  // SGLang diffusion: edits read `image`, a mask is ignored; the default response is a URL that needs storage.
  sglang: {
    editPath: '/images/edits',
    editImageField: 'image',
    editMaskField: 'mask',
    maskConvention: 'ignored',
    seedPerImage: true,
    negativePrompt: 'field',
    sendExtensions: true,
    requestB64: true,
  },
  // vLLM-Omni: b64 only, mask as `mask_image` with white = inpaint, one seed for all images of a call.
  'vllm-omni': {
    editPath: '/images/edits',
    editImageField: 'image',
    editMaskField: 'mask_image',
    maskConvention: 'white-inpaint',
    seedPerImage: false,
    negativePrompt: 'field',
    sendExtensions: true,
    requestB64: true,
  },
  // LocalAI: no /images/edits — inpainting at /images/inpainting (white = inpaint); negative prompt after a
  // `|` in the prompt; n images of one call come back byte-identical.
  localai: {
    editPath: '/images/inpainting',
    editImageField: 'image',
    editMaskField: 'mask',
    maskConvention: 'white-inpaint',
    seedPerImage: false,
    negativePrompt: 'prompt-pipe',
    sendExtensions: true,
    requestB64: true,
  },
};

/** The config's keys, each one as set or else its flavor's default. */
export function serverHabits(config: OpenAIBackendConfig): OpenAIServerHabits {
  const defaults = FLAVOR_HABITS[config.flavor];
  return {
    editPath: config.editPath ?? defaults.editPath,
    editImageField: config.editImageField ?? defaults.editImageField,
    editMaskField: config.editMaskField ?? defaults.editMaskField,
    maskConvention: config.maskConvention ?? defaults.maskConvention,
    seedPerImage: config.seedPerImage ?? defaults.seedPerImage,
    negativePrompt: config.negativePrompt ?? defaults.negativePrompt,
    sendExtensions: config.sendExtensions ?? defaults.sendExtensions,
    requestB64: config.requestB64 ?? defaults.requestB64,
  };
}
