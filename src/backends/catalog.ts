import type { ModelConfig } from '../config/schema.js';
import { PixeldError } from '../errors.js';
import type { JobKind } from '../jobs/model.js';

/** The models this daemon serves, as configured; the answer to "which backend runs model X". */
export class ModelCatalog {
  private readonly byId: Map<string, ModelConfig>;

  constructor(readonly models: readonly ModelConfig[]) {
    this.byId = new Map(models.map((m) => [m.id, m]));
  }

  /** The named model, or the first one able to do `kind` when the caller named none. */
  resolve(id: string | undefined, kind: JobKind): ModelConfig {
    if (id === undefined) {
      const fallback = this.models.find((m) => m.capabilities.includes(kind));
      if (fallback === undefined) {
        throw new PixeldError('model_capability_mismatch', `no model here supports ${kind === 'edit' ? 'image edits' : 'image generation'}`, {
          param: 'model',
        });
      }
      return fallback;
    }
    const model = this.byId.get(id);
    if (model === undefined) {
      throw new PixeldError('model_not_found', `The model '${id}' does not exist or you do not have access to it.`, { param: 'model' });
    }
    if (!model.capabilities.includes(kind)) {
      throw new PixeldError(
        'model_capability_mismatch',
        `model '${id}' does not support ${kind === 'edit' ? 'image edits' : 'image generation'}; it supports ${model.capabilities.join(', ')}`,
        { param: 'model' },
      );
    }
    return model;
  }

  defaultSize(model: ModelConfig): string {
    return model.defaultSize ?? model.sizes[0]!;
  }
}
