import { computeAddress, getAddress, getBytes, keccak256, SigningKey, toUtf8Bytes } from 'ethers';

/**
 * dstack's KMS signature chain, as `GetKey` returns it beside a derived key (dstack guest agent and KMS):
 *
 * - `chain[0]`: the app key signs keccak256(`<purpose>:<hex of the derived key's compressed SEC1 public key>`)
 * - `chain[1]`: the KMS root key signs keccak256(`dstack-kms-issued:` ‖ app id (20 bytes) ‖ the app key's
 *   compressed SEC1 public key)
 *
 * Both are 65 bytes, r ‖ s ‖ recovery id (0/1). Recovering the signers walks from the derived key up to a
 * KMS root; the chain proves anything only when that root is one the verifier trusts — the KMS root the
 * measured OS named in its `key-provider` event, or one given by the verifier. A chain made for another
 * app id recovers some other, meaningless root.
 */

export class KmsChainError extends Error {
  override readonly name = 'KmsChainError';
}

export interface KmsChainInput {
  /** Hex signatures as the attestation report serves them (`kms_signature_chain`). */
  chain: readonly string[];
  /** The GetKey purpose the daemon asked for (pixeld: `signing`). */
  purpose: string;
  /** The derived key's public key (any form ethers reads: compressed or uncompressed hex). */
  derivedPublicKey: string;
  /** The app id (hex, 20 bytes) the KMS must have issued the app key to. */
  appId: string;
}

export interface KmsChainResult {
  /** Compressed SEC1 hex (no 0x). */
  appPublicKey: string;
  /** Compressed SEC1 hex (no 0x). */
  kmsRootPublicKey: string;
  kmsRootAddress: string;
}

function recover(message: Uint8Array, signatureHex: string, what: string): string {
  const hex = signatureHex.replace(/^0x/, '');
  if (!/^[0-9a-fA-F]{130}$/.test(hex)) throw new KmsChainError(`${what} must be 65 bytes of hex (r ‖ s ‖ recovery id)`);
  const bytes = Buffer.from(hex, 'hex');
  const recId = bytes[64]!;
  if (recId > 1 && recId !== 27 && recId !== 28) throw new KmsChainError(`${what} has recovery id ${recId}, not 0 or 1`);
  const sig = { r: `0x${bytes.subarray(0, 32).toString('hex')}`, s: `0x${bytes.subarray(32, 64).toString('hex')}`, v: recId < 27 ? 27 + recId : recId };
  try {
    return SigningKey.computePublicKey(SigningKey.recoverPublicKey(keccak256(message), sig), true).slice(2);
  } catch (err) {
    throw new KmsChainError(`${what} does not recover a public key: ${(err as Error).message}`);
  }
}

/** Recovers the app key and the KMS root the chain leads to; the caller decides whether that root is trusted. */
export function recoverKmsChain(input: KmsChainInput): KmsChainResult {
  if (input.chain.length !== 2) throw new KmsChainError(`the chain has ${input.chain.length} signature(s), dstack's has 2 (app key, KMS root)`);
  const appId = input.appId.replace(/^0x/, '');
  if (!/^[0-9a-fA-F]{40}$/.test(appId)) throw new KmsChainError(`app id must be 20 bytes of hex, got "${input.appId}"`);
  let derived: string;
  try {
    derived = SigningKey.computePublicKey(input.derivedPublicKey, true).slice(2);
  } catch (err) {
    throw new KmsChainError(`the derived public key is not a secp256k1 key: ${(err as Error).message}`);
  }
  const appPublicKey = recover(toUtf8Bytes(`${input.purpose}:${derived}`), input.chain[0]!, 'the app key signature (chain[0])');
  const issued = Buffer.concat([Buffer.from('dstack-kms-issued:'), Buffer.from(appId, 'hex'), Buffer.from(appPublicKey, 'hex')]);
  const kmsRootPublicKey = recover(issued, input.chain[1]!, 'the KMS signature (chain[1])');
  return { appPublicKey, kmsRootPublicKey, kmsRootAddress: computeAddress(`0x${kmsRootPublicKey}`) };
}

/** The KMS root named by the event log's key-provider payload, when it is a secp256k1 key (compressed SEC1 hex). */
export function kmsRootOfKeyProvider(keyProvider: string | undefined): string | undefined {
  if (keyProvider === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(keyProvider);
  } catch {
    return undefined;
  }
  const { name, id } = (parsed ?? {}) as { name?: unknown; id?: unknown };
  if (name !== 'kms' || typeof id !== 'string' || !/^0[23][0-9a-fA-F]{64}$/.test(id)) return undefined;
  return id.toLowerCase();
}

/** A KMS root as the verifier gives it, an address or a public key, as an address. */
export function kmsRootAddressOf(value: string): string {
  const hex = value.startsWith('0x') ? value : `0x${value}`;
  if (/^0x[0-9a-fA-F]{40}$/.test(hex)) return getAddress(hex.toLowerCase());
  try {
    return computeAddress(SigningKey.computePublicKey(getBytes(hex), true));
  } catch {
    throw new KmsChainError(`a KMS root must be an address or a secp256k1 public key, got "${value}"`);
  }
}

