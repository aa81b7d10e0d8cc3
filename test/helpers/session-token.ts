import { getBytes, keccak256, toUtf8Bytes, type Wallet } from 'ethers';

export interface TokenFields {
  address?: string;
  provider: string;
  timestamp?: number;
  expiresAt?: number;
  nonce?: string;
  generation?: number;
  tokenId?: number;
}

/**
 * Makes a 0G session token the way 0G's SDK does: the JSON text, an EIP-191 signature over the 32 bytes
 * keccak256(text), and `app-sk-` + base64(text + "|" + sig). `mutate` may change the text after signing.
 */
export async function makeSessionToken(wallet: Wallet, fields: TokenFields, mutate?: (raw: string) => string): Promise<string> {
  const now = Date.now();
  const token = {
    address: fields.address ?? wallet.address,
    provider: fields.provider,
    timestamp: fields.timestamp ?? now,
    expiresAt: fields.expiresAt ?? now + 60 * 60 * 1000,
    nonce: fields.nonce ?? `${now}-${Math.random().toString(36).slice(2)}`,
    generation: fields.generation ?? 0,
    tokenId: fields.tokenId ?? 255,
  };
  const raw = JSON.stringify(token);
  const signature = await wallet.signMessage(getBytes(keccak256(toUtf8Bytes(raw))));
  const sent = mutate ? mutate(raw) : raw;
  return `app-sk-${Buffer.from(`${sent}|${signature}`).toString('base64')}`;
}
