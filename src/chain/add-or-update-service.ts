import { isError, type Signer } from 'ethers';
import type { PixeldError } from '../errors.js';
import { chainUnavailable } from './errors.js';
import { gasLimitFor } from './gas.js';
import type { ChainClient } from './serving-contract.js';

/** ServiceParams as InferenceServing takes it (§4 of the provider protocol; prices in wei). */
export interface ServiceParams {
  serviceType: string;
  url: string;
  model: string;
  verifiability: string;
  inputPrice: bigint;
  /** Wei per image for image services. */
  outputPrice: bigint;
  /** JSON text, at most 4096 bytes (the contract reverts AdditionalInfoTooLong beyond). */
  additionalInfo: string;
  teeSignerAddress: string;
}

export interface AddOrUpdateServiceParameters {
  /** The provider wallet, connected to `client.provider`; the service is registered under its address. */
  signer: Signer;
  service: ServiceParams;
  /** Sent as msg.value when the provider has no service yet; updates always send 0. */
  stakeWei: bigint;
  /** How long to wait for the receipt once the transaction is sent. @default 120_000 */
  receiptTimeoutMs?: number;
  /** Told the hash as soon as the node took the transaction, before its receipt is waited for. */
  onSent?: (hash: string) => void;
}

export interface AddOrUpdateServiceReturnType {
  hash: string;
  blockNumber: number;
  /** true when this transaction created the service (and carried the stake). */
  firstRegistration: boolean;
  /** msg.value sent: the stake on first registration, else 0. */
  valueWei: bigint;
}

/** The contract or the node refused the transaction: a definite answer, so retrying as is will not help. */
export class AddOrUpdateServiceRejectedError extends Error {
  override readonly name = 'AddOrUpdateServiceRejectedError';
  /** The contract's custom error (`InsufficientStake`, `AdditionalInfoTooLong`, …), or the node's reason (`INSUFFICIENT_FUNDS`). */
  readonly reason: string;
  /** Set when the transaction was mined and reverted. */
  readonly hash: string | undefined;

  constructor(reason: string, message: string, options: { cause?: unknown; hash?: string } = {}) {
    super(message, { cause: options.cause });
    this.reason = reason;
    this.hash = options.hash;
  }
}

export type AddOrUpdateServiceErrorType = PixeldError | AddOrUpdateServiceRejectedError;

/**
 * Sends `addOrUpdateService(service)` from the provider wallet and waits for the receipt. Whether this is
 * the first registration is read from the chain just before sending, so the stake goes out exactly when
 * the contract needs it. Rejects with AddOrUpdateServiceRejectedError when the contract reverts or the
 * node refuses the transaction, with `chain_unavailable` when the chain could not be reached (the
 * details then name the transaction hash if it was sent: it may still be mined).
 */
export async function addOrUpdateService(
  client: ChainClient,
  params: AddOrUpdateServiceParameters,
): Promise<AddOrUpdateServiceReturnType> {
  const receiptTimeoutMs = params.receiptTimeoutMs ?? 120_000;
  let exists: boolean;
  try {
    const provider = await params.signer.getAddress();
    exists = Boolean(await client.serving.getFunction('serviceExists').staticCall(provider));
  } catch (err) {
    throw chainUnavailable('serviceExists', err);
  }
  const valueWei = exists ? 0n : params.stakeWei;
  const serving = client.serving.connect(params.signer) as typeof client.serving;

  let hash: string;
  let wait: (confirms: number, timeoutMs: number) => Promise<{ blockNumber: number; hash: string } | null>;
  try {
    const send = serving.getFunction('addOrUpdateService');
    const estimate = await send.estimateGas(params.service, { value: valueWei });
    const tx = await send.send(params.service, { value: valueWei, gasLimit: gasLimitFor(estimate) });
    hash = tx.hash;
    wait = (confirms, timeoutMs) => tx.wait(confirms, timeoutMs);
  } catch (err) {
    throw rejectedOrUnavailable(err, undefined);
  }
  params.onSent?.(hash);
  let receipt: { blockNumber: number; hash: string } | null;
  try {
    receipt = await wait(1, receiptTimeoutMs);
  } catch (err) {
    throw rejectedOrUnavailable(err, hash);
  }
  if (!receipt) throw chainUnavailable('addOrUpdateService receipt', new Error(`no receipt for ${hash}`));
  return { hash, blockNumber: receipt.blockNumber, firstRegistration: !exists, valueWei };
}

function rejectedOrUnavailable(err: unknown, hash: string | undefined): AddOrUpdateServiceErrorType {
  if (isError(err, 'CALL_EXCEPTION')) {
    const reason = err.revert?.name ?? err.reason ?? 'reverted';
    const args = err.revert ? `(${err.revert.args.map(String).join(', ')})` : '';
    const where = hash === undefined ? 'the contract refuses addOrUpdateService' : `addOrUpdateService ${hash} reverted`;
    return new AddOrUpdateServiceRejectedError(reason, `${where}: ${reason}${args}`, { cause: err, ...(hash ? { hash } : {}) });
  }
  if (isError(err, 'INSUFFICIENT_FUNDS')) {
    return new AddOrUpdateServiceRejectedError(
      'INSUFFICIENT_FUNDS',
      'the provider wallet cannot pay for addOrUpdateService (stake plus gas)',
      { cause: err },
    );
  }
  const error = chainUnavailable(hash === undefined ? 'addOrUpdateService' : 'addOrUpdateService receipt', err);
  if (hash !== undefined) error.details.push(`Transaction: ${hash} was sent and may still be mined; check with pixeld service`);
  return error;
}
