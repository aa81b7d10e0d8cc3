import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Request, Response } from 'express';
import type { AdminToken } from '../../auth/admin-token.js';

/**
 * The dashboard's login session: a cookie `v1.<expiresMs>.<mac>`, the mac an HMAC of the expiry under a
 * key derived from both the admin token (AdminToken.derivedKey) and the TEE key (a secret only it can
 * compute), so reading `admin.tokenSha256` from the config is not enough to forge one. Nothing is stored:
 * every replica sharing the token and the key checks every replica's cookies, and changing either ends every
 * session. A session cannot
 * be revoked alone before it expires: logging out clears the cookie in that browser.
 */

export const SESSION_COOKIE = 'pixeld_dashboard';
/** How long a login lasts. */
export const SESSION_MS = 12 * 60 * 60 * 1000;
const KEY_PURPOSE = 'pixeld dashboard session/1';
/** What the TEE key signs to derive the session's second secret. */
export const DASHBOARD_SESSION_SECRET_USE = 'pixeld dashboard session key v1';
const COOKIE_PATH = '/dashboard';

export interface DashboardSessions {
  /** A fresh cookie value, valid for SESSION_MS from nowMs. */
  issue(nowMs: number): string;
  /** Whether the value is one this token issued and it has not expired. */
  verify(value: string, nowMs: number): boolean;
}

/**
 * Undefined when no admin token is configured: then nobody logs in.
 * @param teeSecret teeDerivedSecret(tee, DASHBOARD_SESSION_SECRET_USE)
 */
export function dashboardSessions(token: AdminToken, teeSecret: Buffer): DashboardSessions | undefined {
  const tokenKey = token.derivedKey(KEY_PURPOSE);
  if (tokenKey === undefined) return undefined;
  const key = createHmac('sha256', teeSecret).update(tokenKey).digest();
  const macOf = (expiresMs: string) => createHmac('sha256', key).update(`v1.${expiresMs}`).digest();
  return {
    issue(nowMs) {
      const expiresMs = String(nowMs + SESSION_MS);
      return `v1.${expiresMs}.${macOf(expiresMs).toString('base64url')}`;
    },
    verify(value, nowMs) {
      const parts = /^v1\.(\d{1,16})\.([\w-]{43})$/.exec(value);
      if (!parts) return false;
      const [, expiresMs, mac] = parts as unknown as [string, string, string];
      const presented = Buffer.from(mac, 'base64url');
      return presented.length === 32 && timingSafeEqual(presented, macOf(expiresMs)) && Number(expiresMs) > nowMs;
    },
  };
}

/** The session cookie's value on the request, if any (the app has no cookie parser: one cookie is read here). */
export function sessionCookieOf(req: Request): string | undefined {
  for (const pair of (req.headers.cookie ?? '').split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0 && pair.slice(0, eq).trim() === SESSION_COOKIE) return pair.slice(eq + 1).trim();
  }
  return undefined;
}

/** HttpOnly (no script reads it), SameSite=Strict (no other site sends it), Secure over https, only under /dashboard. */
export function setSessionCookie(req: Request, res: Response, value: string): void {
  res.cookie(SESSION_COOKIE, value, { httpOnly: true, sameSite: 'strict', secure: req.secure, path: COOKIE_PATH, maxAge: SESSION_MS });
}

export function clearSessionCookie(req: Request, res: Response): void {
  res.clearCookie(SESSION_COOKIE, { httpOnly: true, sameSite: 'strict', secure: req.secure, path: COOKIE_PATH });
}
