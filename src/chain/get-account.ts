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
  /** Refund slots; the active ones are the first `validRefundsLength`, oldest first. */
  refunds: ServingRefund[];
  validRefundsLength: bigint;
  /** The block it was read at, when read at a definite block number. */
  block?: number;
}

/** A refund request: withdrawable from `createdAt + lockTime()` (chain seconds) unless a settlement takes it first. */
export interface ServingRefund {
  index: bigint;
  amount: bigint;
  /** Block timestamp of the request, in seconds. */
  createdAt: bigint;
  processed: boolean;
}

export type GetAccountReturnType = ServingAccount | undefined;

/**
 * Reads `getAccount(user, provider)`. Resolves undefined when the contract says there is no such account;
 * rejects with `chain_unavailable` when the chain could not be asked.
 */
export async function getAccount(
  client: ChainClient,
  user: string,
  provider: string,
  /** Read the state as of this block. @default 'latest' */
  blockTag?: number | string,
): Promise<GetAccountReturnType> {
  let raw: Record<string, unknown>;
  try {
    const overrides = blockTag === undefined ? {} : { blockTag };
    raw = (await client.serving.getFunction('getAccount').staticCall(user, provider, overrides)) as Record<string, unknown>;
  } catch (err) {
    if (isRevert(err)) return undefined;
    throw chainUnavailable('getAccount', err);
  }
  return { ...toServingAccount(raw), ...(typeof blockTag === 'number' ? { block: blockTag } : {}) };
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
    refunds: Array.from((raw.refunds as Iterable<Record<string, unknown>> | undefined) ?? [], (r) => ({
      index: BigInt(r.index as bigint),
      amount: BigInt(r.amount as bigint),
      createdAt: BigInt(r.createdAt as bigint),
      processed: Boolean(r.processed),
    })),
    validRefundsLength: BigInt((raw.validRefundsLength as bigint | undefined) ?? 0n),
  };
}

/** Refunds still waiting to be withdrawn (a settlement may take from them until they are). */
export function activeRefunds(account: ServingAccount): ServingRefund[] {
  return account.refunds.slice(0, Number(account.validRefundsLength)).filter((r) => !r.processed && r.amount > 0n);
}
