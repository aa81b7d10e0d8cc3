import type { ModelConfig } from '../config/schema.js';
import type { ServingService } from './get-service.js';

/**
 * How a model's configured price stands against what the chain advertises for it. InferenceServing keeps
 * one service per provider address, so at most one model — the one named in that service — has an
 * advertised price; every other model is `not-registered`.
 */
export type PriceAgreement = 'equal' | 'config-below-chain' | 'config-above-chain' | 'not-registered';

export interface ModelPriceCheck {
  modelId: string;
  /** The model's `pricePerImageWei`: what a delivered image is billed. */
  configPriceWei: bigint;
  /** `outputPrice` of the provider's service when that service is for this model. */
  chainPriceWei: bigint | undefined;
  /** The model the provider's service names, when there is a service at all. */
  registeredModel: string | undefined;
  agreement: PriceAgreement;
  /**
   * Whether 0G users may be billed for this model: never more than the chain advertises. A free model is
   * billable even when it is not registered, since it bills nothing.
   */
  billable: boolean;
  /** For the operator (log, /readyz): what disagrees and what to do about it; undefined when equal. */
  message: string | undefined;
}

export interface CompareModelPricesParameters {
  /** The provider's service as read from the chain; undefined when it has none. */
  service: ServingService | undefined;
  models: ReadonlyArray<Pick<ModelConfig, 'id' | 'pricePerImageWei'>>;
  /** Named in the messages, so an operator sees which registration is meant. */
  providerAddress: string;
}

export type CompareModelPricesReturnType = ModelPriceCheck[];

/** Compares each model's configured price with the provider's on-chain service; reads nothing. */
export function compareModelPrices(params: CompareModelPricesParameters): CompareModelPricesReturnType {
  return params.models.map((model) => compareOne(model, params));
}

function compareOne(model: Pick<ModelConfig, 'id' | 'pricePerImageWei'>, params: CompareModelPricesParameters): ModelPriceCheck {
  const { service, providerAddress } = params;
  const configPriceWei = model.pricePerImageWei;
  const registerHint = `run \`npx pixeld register --model ${model.id}\` to publish the configured price`;
  const base = { modelId: model.id, configPriceWei, registeredModel: service?.model };

  if (service === undefined || service.model !== model.id) {
    const where =
      service === undefined
        ? `provider ${providerAddress} has no service on chain`
        : `the service of provider ${providerAddress} on chain is for model '${service.model}', not '${model.id}'`;
    const billable = configPriceWei === 0n;
    const consequence = billable
      ? 'it is free, so 0G users are still served (nothing is billed)'
      : `0G-billed requests for it are refused: nothing on chain advertises its price of ${configPriceWei} wei per image; ${registerHint}`;
    return { ...base, chainPriceWei: undefined, agreement: 'not-registered', billable, message: `model '${model.id}': ${where}; ${consequence}` };
  }

  const chainPriceWei = service.outputPrice;
  const prices = `config pricePerImageWei ${configPriceWei} wei, chain outputPrice ${chainPriceWei} wei`;
  if (configPriceWei === chainPriceWei) {
    return { ...base, chainPriceWei, agreement: 'equal', billable: true, message: undefined };
  }
  if (configPriceWei < chainPriceWei) {
    return {
      ...base,
      chainPriceWei,
      agreement: 'config-below-chain',
      billable: true,
      message: `model '${model.id}': ${prices}: users are billed the lower configured price, less than the chain advertises; ${registerHint}`,
    };
  }
  return {
    ...base,
    chainPriceWei,
    agreement: 'config-above-chain',
    billable: false,
    message:
      `model '${model.id}': ${prices}: 0G-billed requests for it are refused, since they would be billed more than ` +
      `the chain advertises; ${registerHint}, or lower pricePerImageWei to ${chainPriceWei}`,
  };
}
