import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { Request, RequestHandler } from 'express';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../config/load.js';
import { PixeldError } from '../errors.js';

/**
 * The operator's token for /v1/admin/*. Only its sha256 is held (from `admin.tokenSha256`, or hashed from the
 * env var `admin.tokenEnv` names at start-up); a presented token is hashed and compared in constant time.
 * Without either setting nothing opens the admin routes. Job credentials (0G tokens, API keys) never do.
 */
export class AdminToken {
  private constructor(private readonly digest: Buffer | undefined) {}

  static fromConfig(admin: Config['admin'], env: NodeJS.ProcessEnv): AdminToken {
    if (admin.tokenSha256 !== undefined) return new AdminToken(Buffer.from(admin.tokenSha256, 'hex'));
    if (admin.tokenEnv !== undefined) {
      const value = env[admin.tokenEnv];
      if (value === undefined || value === '') throw new ConfigError(`config: admin.tokenEnv: env ${admin.tokenEnv} is not set`);
      return new AdminToken(sha256(value));
    }
    return new AdminToken(undefined);
  }

  get configured(): boolean {
    return this.digest !== undefined;
  }

  matches(presented: string): boolean {
    if (this.digest === undefined) return false;
    // Both sides are 32-byte digests, so the comparison takes the same time whatever was presented.
    return timingSafeEqual(this.digest, sha256(presented));
  }

  /**
   * A key for `purpose` (HMAC of the purpose under the token's sha256): every replica given the same token
   * derives the same key without sharing anything else, and the key reveals neither the token nor its
   * digest. Undefined when no token is configured.
   */
  derivedKey(purpose: string): Buffer | undefined {
    return this.digest && createHmac('sha256', this.digest).update(purpose, 'utf8').digest();
  }
}

/** The token of an `Authorization: Bearer <token>` header; undefined without one. */
export function bearerTokenOf(req: Request): string | undefined {
  return /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')?.[1];
}

/** 401 `invalid_admin_token` unless the request carries `Authorization: Bearer <admin token>`. */
export function requireAdmin(token: AdminToken): RequestHandler {
  return (req, _res, next) => {
    const presented = bearerTokenOf(req);
    if (!token.configured) {
      next(new PixeldError('invalid_admin_token', 'the admin routes are closed: set admin.tokenSha256 or admin.tokenEnv to open them'));
      return;
    }
    if (presented === undefined || !token.matches(presented)) {
      next(new PixeldError('invalid_admin_token', 'missing or wrong admin token: send Authorization: Bearer <admin token>'));
      return;
    }
    next();
  };
}

function sha256(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}
