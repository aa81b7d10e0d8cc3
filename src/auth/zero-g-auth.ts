import { chainUnavailable } from '../chain/errors.js';
import { getAccount, type ServingAccount } from '../chain/get-account.js';
import type { ChainClient } from '../chain/serving-contract.js';
import { PixeldError } from '../errors.js';
import { checkSessionToken, EPHEMERAL_TOKEN_ID, parseSessionToken, SessionTokenError } from './session-token.js';

export interface ZeroGAuthDeps {
  chain: ChainClient;
  providerAddress: string;
  /** How long an Account read is trusted. @default 10_000 */
  chainCacheMs: number;
  maxClockSkewMs: number;
  now: () => number;
}

/**
 * Admits a 0G session token only when every check of §2 passes: the signature over the raw text, this
 * provider, the lifetime, and — from the chain, cached for at most `chainCacheMs` — the account exists, is
 * acknowledged, has the token's generation, and (for persistent tokens) has not revoked its id. A chain
 * that cannot be read refuses with 503; it never admits.
 */
export class ZeroGAuthenticator {
  private readonly cache = new Map<string, { atMs: number; account: Promise<ServingAccount | undefined> }>();

  constructor(private readonly deps: ZeroGAuthDeps) {}

  /** Returns the caller's checksummed address and their account as last read (for admission). */
  async authenticate(credential: string): Promise<{ owner: string; account: ServingAccount }> {
    const { now } = this.deps;
    let user: string;
    let parsed;
    try {
      parsed = parseSessionToken(credential);
      user = checkSessionToken(parsed, {
        providerAddress: this.deps.providerAddress,
        nowMs: now(),
        maxClockSkewMs: this.deps.maxClockSkewMs,
      });
    } catch (err) {
      if (err instanceof SessionTokenError) throw refused(err.message);
      throw err;
    }
    const account = await this.account(user);
    if (!account) throw refused('no account with this provider for the token’s address');
    if (!account.acknowledged) throw refused('the account has not acknowledged this provider');
    if (BigInt(parsed.token.generation) !== account.generation) throw refused('session token was revoked (generation changed)');
    if (parsed.token.tokenId !== EPHEMERAL_TOKEN_ID && ((account.revokedBitmap >> BigInt(parsed.token.tokenId)) & 1n) === 1n) {
      throw refused('session token was revoked');
    }
    return { owner: user, account };
  }

  /** A settlement of these users was mined: their cached accounts are stale. */
  forget(users: readonly string[]): void {
    for (const user of users) this.cache.delete(user.toLowerCase());
  }

  private account(user: string): Promise<ServingAccount | undefined> {
    const key = user.toLowerCase();
    const nowMs = this.deps.now();
    const hit = this.cache.get(key);
    if (hit && nowMs - hit.atMs < this.deps.chainCacheMs) return hit.account;
    // At a definite block: admission counts receipts settled after it as still owed (billing/admission.ts).
    const account = this.deps.chain.provider
      .getBlockNumber()
      .catch((err: unknown) => {
        throw chainUnavailable('getBlockNumber', err);
      })
      .then((block) => getAccount(this.deps.chain, user, this.deps.providerAddress, block));
    this.cache.set(key, { atMs: nowMs, account });
    // A failed read is never cached: the next request asks the chain again.
    account.catch(() => {
      if (this.cache.get(key)?.account === account) this.cache.delete(key);
    });
    this.prune(nowMs);
    return account;
  }

  private prune(nowMs: number): void {
    if (this.cache.size < 10_000) return;
    for (const [key, entry] of this.cache) if (nowMs - entry.atMs >= this.deps.chainCacheMs) this.cache.delete(key);
  }
}

function refused(reason: string): PixeldError {
  return new PixeldError('invalid_api_key', `invalid session token: ${reason}`);
}
