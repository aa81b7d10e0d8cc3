import type { Agent } from 'undici';

/**
 * Plumbing every HTTP backend adapter shares: reading undici's errors, headers, and closing an agent
 * without letting a hung upstream call hold the daemon's shutdown hostage.
 */

/** How long close() waits for calls in flight before destroying the agent's sockets. */
export const CLOSE_GRACE_MS = 5_000;

/** undici codes that mean the adapter built a bad request: retrying cannot help, so they stay bugs. */
export const PROGRAMMING_ERROR_CODES = new Set(['UND_ERR_INVALID_ARG', 'UND_ERR_INVALID_RETURN_VALUE', 'UND_ERR_NOT_SUPPORTED']);

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The error's code, or its cause's: Node puts the socket error under cause for some undici errors. */
export function errorCode(err: unknown): string | undefined {
  if (!isRecord(err)) return undefined;
  if (typeof err.code === 'string') return err.code;
  return isRecord(err.cause) && typeof err.cause.code === 'string' ? err.cause.code : undefined;
}

export function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

export async function closeAgent(agent: Agent, graceMs = CLOSE_GRACE_MS): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const grace = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), graceMs);
    timer.unref();
  });
  try {
    const outcome = await Promise.race([agent.close().then(() => 'closed' as const), grace]);
    if (outcome === 'late') await agent.destroy();
  } finally {
    clearTimeout(timer);
  }
}
