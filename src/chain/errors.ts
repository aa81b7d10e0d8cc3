import { isError } from 'ethers';
import { PixeldError } from '../errors.js';

/**
 * A contract call that reverted is an answer (e.g. "no such account"); anything else — timeout, refused
 * connection, a bad RPC reply — means the chain could not be asked, and the daemon must not guess.
 */
export function isRevert(err: unknown): boolean {
  return isError(err, 'CALL_EXCEPTION') && (err as { data?: unknown }).data !== undefined && (err as { data?: unknown }).data !== null;
}

export function chainUnavailable(action: string, err: unknown): PixeldError {
  const reason = (err as { shortMessage?: string; message?: string })?.shortMessage ?? (err as Error)?.message ?? String(err);
  return new PixeldError('chain_unavailable', `the chain could not be read (${action}); try again shortly`, {
    cause: err,
    retryAfterSeconds: 5,
    details: [`Reason: ${reason}`],
  });
}
