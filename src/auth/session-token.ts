import { getAddress, getBytes, hashMessage, isAddress, keccak256, recoverAddress, toUtf8Bytes } from 'ethers';

/**
 * 0G session tokens (0g-provider-protocol.md §2): `Bearer app-sk-<base64(rawToken + "|" + sigHex)>`, where
 * rawToken is the JSON text as sent and sigHex an EIP-191 signature over the 32 bytes keccak256(rawToken).
 * The signer is recovered from the raw text itself, never from a re-serialised copy.
 */

export const SESSION_TOKEN_PREFIX = 'app-sk-';
export const EPHEMERAL_TOKEN_ID = 255;
export const MAX_EPHEMERAL_LIFETIME_MS = 24 * 60 * 60 * 1000;

export interface SessionToken {
  address: string;
  provider: string;
  timestamp: number;
  expiresAt: number;
  nonce: string;
  generation: number;
  tokenId: number;
}

export interface ParsedSessionToken {
  raw: string;
  token: SessionToken;
  signature: string;
}

/** A token that cannot be accepted; the message says why and reveals nothing about other accounts. */
export class SessionTokenError extends Error {
  override readonly name = 'SessionTokenError';
}

export function parseSessionToken(credential: string): ParsedSessionToken {
  if (!credential.startsWith(SESSION_TOKEN_PREFIX)) throw new SessionTokenError('not a 0G session token');
  const decoded = Buffer.from(credential.slice(SESSION_TOKEN_PREFIX.length), 'base64').toString('utf8');
  const bar = decoded.lastIndexOf('|');
  if (bar <= 0) throw new SessionTokenError('malformed session token');
  const raw = decoded.slice(0, bar);
  const sigHex = decoded.slice(bar + 1).trim();
  const signature = sigHex.startsWith('0x') ? sigHex : `0x${sigHex}`;
  if (!/^0x[0-9a-fA-F]{130}$/.test(signature)) throw new SessionTokenError('malformed session token signature');
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    throw new SessionTokenError('malformed session token');
  }
  return { raw, token: readFields(value), signature };
}

function readFields(value: unknown): SessionToken {
  const v = value as Record<string, unknown> | null;
  if (v === null || typeof v !== 'object') throw new SessionTokenError('malformed session token');
  const address = typeof v.address === 'string' ? v.address : '';
  const provider = typeof v.provider === 'string' ? v.provider : '';
  if (!/^0x[0-9a-fA-F]{40}$/.test(address) || !/^0x[0-9a-fA-F]{40}$/.test(provider)) {
    throw new SessionTokenError('session token lacks a valid address or provider');
  }
  // Mixed case is an EIP-55 checksum, and a wrong one means a mistyped address (ethers' getAddress throws on it).
  if (!isAddress(address)) throw new SessionTokenError('session token address has a wrong EIP-55 checksum');
  const num = (key: string): number => {
    const n = v[key];
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw new SessionTokenError(`session token field ${key} is invalid`);
    return n;
  };
  const tokenId = num('tokenId');
  if (tokenId > EPHEMERAL_TOKEN_ID) throw new SessionTokenError('session token field tokenId is invalid');
  return {
    address,
    provider,
    timestamp: num('timestamp'),
    expiresAt: num('expiresAt'),
    nonce: String(v.nonce ?? ''),
    generation: num('generation'),
    tokenId,
  };
}

/** The address that signed the raw token text. */
export function recoverTokenSigner(parsed: ParsedSessionToken): string {
  try {
    return recoverAddress(hashMessage(getBytes(keccak256(toUtf8Bytes(parsed.raw)))), parsed.signature);
  } catch {
    throw new SessionTokenError('session token signature is invalid');
  }
}

export interface ClaimCheck {
  providerAddress: string;
  nowMs: number;
  maxClockSkewMs: number;
}

/** Everything that can be checked without the chain: signer, provider, lifetime. Returns the user address. */
export function checkSessionToken(parsed: ParsedSessionToken, check: ClaimCheck): string {
  const { token } = parsed;
  if (recoverTokenSigner(parsed).toLowerCase() !== token.address.toLowerCase()) {
    throw new SessionTokenError('session token signature does not match its address');
  }
  // The SDK copies the provider as the caller typed it: compare case-insensitively.
  if (token.provider.toLowerCase() !== check.providerAddress.toLowerCase()) {
    throw new SessionTokenError('session token is for another provider');
  }
  if (token.timestamp > check.nowMs + check.maxClockSkewMs) throw new SessionTokenError('session token is issued in the future');
  const ephemeral = token.tokenId === EPHEMERAL_TOKEN_ID;
  if (ephemeral) {
    if (token.expiresAt === 0) throw new SessionTokenError('an ephemeral session token must expire');
    if (token.expiresAt - token.timestamp > MAX_EPHEMERAL_LIFETIME_MS) {
      throw new SessionTokenError('an ephemeral session token may last at most 24 hours');
    }
  }
  if (token.expiresAt !== 0 && token.expiresAt <= check.nowMs) throw new SessionTokenError('session token has expired');
  return getAddress(token.address);
}
