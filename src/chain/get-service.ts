import type { BlockTag } from 'ethers';
import type { PixeldError } from '../errors.js';
import { chainUnavailable, isRevert } from './errors.js';
import type { ChainClient } from './serving-contract.js';

/** A provider's service as InferenceServing keeps it (§4 of the provider protocol; prices in wei). */
export interface ServingService {
  provider: string;
  serviceType: string;
  url: string;
  inputPrice: bigint;
  /** Wei per image for image services. */
  outputPrice: bigint;
  /** Unix seconds of the last addOrUpdateService. */
  updatedAt: bigint;
  model: string;
  verifiability: string;
  additionalInfo: string;
  teeSignerAddress: string;
  /** Set by the contract owner; any change of the attested fields resets it. */
  teeSignerAcknowledged: boolean;
}

export interface GetServiceParameters {
  /** The provider wallet address the service is registered under. */
  provider: string;
  /** Block to read at, e.g. a receipt's block so a read right after a transaction sees it. @default 'latest' */
  blockTag?: BlockTag;
}

export type GetServiceReturnType = ServingService | undefined;
export type GetServiceErrorType = PixeldError;

/**
 * Reads `serviceExists(provider)` and then `getService(provider)`. Resolves undefined when the provider has
 * no service (also when it is removed between the two reads); rejects with `chain_unavailable` when the
 * chain could not be asked.
 */
export async function getService(client: ChainClient, params: GetServiceParameters): Promise<GetServiceReturnType> {
  const overrides = { blockTag: params.blockTag ?? 'latest' };
  let exists: boolean;
  try {
    exists = Boolean(await client.serving.getFunction('serviceExists').staticCall(params.provider, overrides));
  } catch (err) {
    throw chainUnavailable('serviceExists', err);
  }
  if (!exists) return undefined;
  let raw: Record<string, unknown>;
  try {
    raw = (await client.serving.getFunction('getService').staticCall(params.provider, overrides)) as Record<string, unknown>;
  } catch (err) {
    if (isRevert(err)) return undefined; // ServiceNotExist: removed since serviceExists answered
    throw chainUnavailable('getService', err);
  }
  return toServingService(raw);
}

export function toServingService(raw: Record<string, unknown>): ServingService {
  return {
    provider: String(raw.provider),
    serviceType: String(raw.serviceType),
    url: String(raw.url),
    inputPrice: BigInt(raw.inputPrice as bigint),
    outputPrice: BigInt(raw.outputPrice as bigint),
    updatedAt: BigInt(raw.updatedAt as bigint),
    model: String(raw.model),
    verifiability: String(raw.verifiability),
    additionalInfo: String(raw.additionalInfo),
    teeSignerAddress: String(raw.teeSignerAddress),
    teeSignerAcknowledged: Boolean(raw.teeSignerAcknowledged),
  };
}
