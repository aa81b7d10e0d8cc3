import type { RequestHandler } from 'express';
import type { ServingAccount } from '../chain/get-account.js';
import { PixeldError } from '../errors.js';
import type { ApiKeyRing } from './api-keys.js';
import { SESSION_TOKEN_PREFIX } from './session-token.js';
import type { ZeroGAuthenticator } from './zero-g-auth.js';

export interface Authenticators {
  /** Present when auth.mode includes `0g`. */
  zeroG: ZeroGAuthenticator | undefined;
  /** Present when auth.mode includes `api-key`. */
  apiKeys: ApiKeyRing | undefined;
}

/** The owner every caller is when auth.mode is `none`. */
export const ANONYMOUS_OWNER = 'anonymous';

/**
 * Sets `req.owner` from the Authorization header: a 0G session token (`Bearer app-sk-…`) gives the user's
 * address, an API key its configured owner id. Without either method configured everyone is anonymous.
 * Missing or bad credentials are one 401 `invalid_api_key`.
 */
export function authenticate(auth: Authenticators): RequestHandler {
  const open = auth.zeroG === undefined && auth.apiKeys === undefined;
  return (req, _res, next) => {
    if (open) {
      req.owner = ANONYMOUS_OWNER;
      next();
      return;
    }
    resolveCaller(auth, req.headers.authorization).then(
      ({ owner, account }) => {
        req.owner = owner;
        req.account = account;
        next();
      },
      (err: unknown) => next(err),
    );
  };
}

async function resolveCaller(auth: Authenticators, header: string | undefined): Promise<{ owner: string; account?: ServingAccount }> {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  if (!match) throw new PixeldError('invalid_api_key', 'missing credentials: send Authorization: Bearer <token or API key>');
  const credential = match[1]!;
  if (credential.startsWith(SESSION_TOKEN_PREFIX) && auth.zeroG) return auth.zeroG.authenticate(credential);
  const owner = auth.apiKeys?.ownerOf(credential);
  if (owner !== undefined) return { owner };
  throw new PixeldError('invalid_api_key', 'invalid credentials');
}
