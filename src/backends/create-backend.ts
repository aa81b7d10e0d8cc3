import type { BackendConfig } from '../config/schema.js';
import type { Logger } from '../obs/logger.js';
import { createA1111Backend } from './a1111.js';
import { createComfyUIBackend } from './comfyui.js';
import { createOpenAIBackend } from './openai.js';
import { createReferenceBackend } from './reference.js';
import { createSiliconFlowBackend } from './siliconflow.js';
import type { ImageBackend } from './types.js';

/** The adapter for one configured backend; later backends add a case here and a file beside it. */
export function createBackend(config: BackendConfig, deps: { logger: Logger }): ImageBackend {
  switch (config.type) {
    case 'reference':
      return createReferenceBackend(config);
    case 'openai':
      return createOpenAIBackend(config, { logger: deps.logger.child({ backendId: config.id }) });
    case 'siliconflow':
      return createSiliconFlowBackend(config, { logger: deps.logger.child({ backendId: config.id }) });
    case 'a1111':
      return createA1111Backend(config, { logger: deps.logger.child({ backendId: config.id }) });
    case 'comfyui':
      return createComfyUIBackend(config, { logger: deps.logger.child({ backendId: config.id }) });
  }
}
