import type { ChainClient } from '../../chain/serving-contract.js';
import type { ServingService } from '../../chain/get-service.js';
import type { Config } from '../../config/schema.js';
import type { TeeKeyProvider } from '../../tee/key-provider.js';

/**
 * What one `pixeld doctor` check is and what it found. Checks run one after another and share a state
 * object: a check records what later ones need (the config, the chain client, the signer the daemon
 * attests), and names the checks it depends on, so a failure upstream makes it "skip", not a second ✗.
 */

export type CheckStatus = 'pass' | 'warn' | 'fail' | 'skip';

export type CheckGroup = 'config' | 'storage' | 'backends' | 'tee' | 'daemon' | 'chain' | 'billing';

export interface CheckOutcome {
  status: CheckStatus;
  summary: string;
  /** For fail and warn: one line naming the config key, env var or command that fixes it. */
  hint?: string;
}

/** One line of the report, and one element of `--json`'s checks. */
export interface CheckResult extends CheckOutcome {
  id: string;
  group: CheckGroup;
}

export interface DoctorState {
  env: NodeJS.ProcessEnv;
  config?: Readonly<Config>;
  /** The base URL of the running daemon checked (--url, else provider.service.url, else the listen address). */
  daemonUrl?: string;
  /** This process's TEE key, when it can be opened here (dev key file, dstack agent); never made by doctor. */
  localKey?: TeeKeyProvider;
  /** The signer the running daemon attests (its report's signing_address). */
  daemonSigner?: string;
  chain?: ChainClient;
  providerAddress?: string;
  service?: ServingService;
  /** Run once every check is done, newest first. */
  cleanups: Array<() => Promise<void> | void>;
}

export interface Check {
  id: string;
  group: CheckGroup;
  /** What is checked, as the line starts: "data dir writable". */
  title: string;
  /** Checks that must have passed (or warned) for this one to mean anything. */
  needs?: readonly string[];
  /** @default DoctorOptions.checkTimeoutMs */
  timeoutMs?: number;
  /** The fix shown when the check throws or runs out of time. */
  hint: string;
  run(state: DoctorState, signal: AbortSignal): Promise<CheckOutcome>;
}

export const pass = (summary: string): CheckOutcome => ({ status: 'pass', summary });
export const warn = (summary: string, hint: string): CheckOutcome => ({ status: 'warn', summary, hint });
export const fail = (summary: string, hint: string): CheckOutcome => ({ status: 'fail', summary, hint });
export const skip = (summary: string): CheckOutcome => ({ status: 'skip', summary });

/**
 * Runs the checks in order, each under its timeout; a check whose needs did not pass is skipped with the
 * reason. `onResult` hears each result as it is known, so a person sees progress line by line.
 */
export async function runChecks(
  checks: readonly Check[],
  state: DoctorState,
  options: { checkTimeoutMs: number; onResult: (result: CheckResult, title: string) => void },
): Promise<CheckResult[]> {
  const results = new Map<string, CheckResult>();
  for (const check of checks) {
    const outcome = await outcomeOf(check, state, results, options.checkTimeoutMs);
    const result: CheckResult = { id: check.id, group: check.group, ...outcome };
    results.set(check.id, result);
    options.onResult(result, check.title);
  }
  return [...results.values()];
}

async function outcomeOf(check: Check, state: DoctorState, done: ReadonlyMap<string, CheckResult>, defaultTimeoutMs: number): Promise<CheckOutcome> {
  const unmet = (check.needs ?? []).filter((id) => {
    const status = done.get(id)?.status;
    return status !== 'pass' && status !== 'warn';
  });
  if (unmet.length > 0) {
    // A skip passes its own reason on ("chain.* is not set"), rather than a chain of "x skipped".
    const skipped = unmet.map((id) => done.get(id)).find((r) => r?.status === 'skip');
    if (skipped) return skip(skipped.summary);
    return skip(`skipped: ${unmet.map((id) => `${id} ${done.has(id) ? 'failed' : 'did not run'}`).join(', ')}`);
  }
  const timeoutMs = check.timeoutMs ?? defaultTimeoutMs;
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<CheckOutcome>((resolve) => {
    timer = setTimeout(() => {
      controller.abort(new Error(`no answer within ${timeoutMs / 1000} s`));
      resolve(fail(`no answer within ${timeoutMs / 1000} s`, check.hint));
    }, timeoutMs);
  });
  try {
    return await Promise.race([
      check.run(state, controller.signal).catch((err: unknown) => fail(describeError(err), check.hint)),
      timedOut,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** One readable line for an error: a PixeldError's reason detail, a connection error's first cause. */
export function describeError(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) return describeError(err.errors[0]);
  const e = err as { message?: string; code?: string; details?: readonly string[]; cause?: unknown };
  // undici says only "fetch failed"; the refused connection or the DNS error is its cause.
  if (e.message === 'fetch failed' && e.cause !== undefined) return describeError(e.cause);
  const reason = e.details?.find((d) => d.startsWith('Reason: '));
  if (reason) return `${e.message}: ${reason.slice('Reason: '.length)}`;
  if (!e.message && e.cause !== undefined) return describeError(e.cause);
  return e.message || e.code || String(err);
}
