import type { ChainClient } from './serving-contract.js';
import { chainUnavailable, isRevert } from './errors.js';

/** A user's account with this provider, as InferenceServing keeps it (amounts in wei). */
export interface ServingAccount {
  user: string;
  provider: string;
  nonce: bigint;
  balance: bigint;
  pendingRefund: bigint;
  acknowledged: boolean;
  generation: bigint;
  revokedBitmap: bigint;
}

export type GetAccountReturnType = ServingAccount | undefined;

/**
 * Reads `getAccount(user, provider)`. Resolves undefined when the contract says there is no such account;
 * rejects with `chain_unavailable` when the chain could not be asked.
 */
export async function getAccount(client: ChainClient, user: string, provider: string): Promise<GetAccountReturnType> {
  let raw: Record<string, unknown>;
  try {
    raw = (await client.serving.getFunction('getAccount').staticCall(user, provider)) as Record<string, unknown>;
  } catch (err) {
    if (isRevert(err)) return undefined;
    throw chainUnavailable('getAccount', err);
  }
  return toServingAccount(raw);
}

export function toServingAccount(raw: Record<string, unknown>): ServingAccount {
  return {
    user: String(raw.user),
    provider: String(raw.provider),
    nonce: BigInt(raw.nonce as bigint),
    balance: BigInt(raw.balance as bigint),
    pendingRefund: BigInt(raw.pendingRefund as bigint),
    acknowledged: Boolean(raw.acknowledged),
    generation: BigInt(raw.generation as bigint),
    revokedBitmap: BigInt(raw.revokedBitmap as bigint),
  };
}
