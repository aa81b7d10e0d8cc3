import { createHash } from 'node:crypto';
import type { TeeKeyProvider } from './key-provider.js';

/**
 * A secret only the holder of the TEE signing key can compute: the sha256 of the key's signature over a text
 * naming its use. ECDSA signing here is deterministic (RFC 6979), so every replica holding the key derives the
 * same secret and a restart keeps it, while nothing secret is written to disk or config — in plain-TDX mode the
 * operator, who holds both, cannot compute it either.
 */
export function teeDerivedSecret(tee: Pick<TeeKeyProvider, 'signer'>, use: string): Buffer {
  return createHash('sha256').update(tee.signer.signMessageSync(use)).digest();
}
