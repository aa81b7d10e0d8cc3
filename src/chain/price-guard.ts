import type { ModelConfig } from '../config/schema.js';
import { PixeldError } from '../errors.js';
import type { Logger } from '../obs/logger.js';
import { compareModelPrices, type ModelPriceCheck, type PriceAgreement } from './compare-model-prices.js';
import { getService } from './get-service.js';
import type { ChainClient } from './serving-contract.js';

/**
 * Never bill a 0G user more than the chain advertises: at start and every `checkIntervalMs`, each model's
 * `pricePerImageWei` is compared with the `outputPrice` of the provider's on-chain service, and 0G-billed
 * work for a model that would be billed more (or that the chain does not advertise at all) is refused
 * until a later check finds the two agree. API-key callers are not billed on chain and are not affected.
 *
 * When the chain cannot be read, the last verdicts stand. Before the first verdict nothing is trusted:
 * 0G-billed work gets a retryable 503 rather than prices the chain never confirmed.
 */

export interface PriceGuardDeps {
  chain: ChainClient;
  /** The provider wallet address the service is registered under. */
  providerAddress: string;
  models: ReadonlyArray<Pick<ModelConfig, 'id' | 'pricePerImageWei'>>;
  /** billing.priceCheckIntervalMs: time between checks once one has succeeded. */
  checkIntervalMs: number;
  logger: Logger;
  now: () => number;
  /** Until a check has succeeded, the next one comes after this long instead. @default 15_000 */
  uncheckedRetryMs?: number;
  /**
   * Arms a one-shot timer and returns what cancels it; tests pass one they fire by hand.
   * @default setTimeout, unref'd so it never keeps the process alive
   */
  startTimer?: (delayMs: number, onFire: () => void) => () => void;
}

/** `checked`: the chain answered and the verdicts are new; `chain-unavailable`: the previous ones stand. */
export type PriceCheckOutcome = 'checked' | 'chain-unavailable';

export interface ModelPriceStatus {
  /** `unchecked` until the chain has answered once. */
  status: PriceAgreement | 'unchecked';
  /** Whether 0G-billed work for the model is accepted. */
  billable: boolean;
  configPriceWei: string;
  /** The service's outputPrice when the service is for this model, else null. */
  chainPriceWei: string | null;
  /** What disagrees and what to do; absent when the prices are equal. */
  message?: string;
}

export interface PriceGuardReport {
  /** ISO time of the last check the chain answered; null before the first. */
  checkedAt: string | null;
  models: Record<string, ModelPriceStatus>;
}

export interface PriceGuard {
  /** Runs the first check (an unreachable chain is logged, not thrown) and schedules the next ones. */
  start(): Promise<void>;
  /** Cancels the schedule and waits for a check in progress. */
  stop(): Promise<void>;
  /** One check now; concurrent calls share the check in progress. */
  checkNow(): Promise<PriceCheckOutcome>;
  /**
   * For a request billed on chain (a 0G user's): throws 503 `model_price_mismatch` when the model may not
   * be billed, or 503 `chain_unavailable` before the first verdict.
   */
  assertBillable(modelId: string): void;
  /** The verdict per model, for /readyz. */
  report(): PriceGuardReport;
}

const DEFAULT_UNCHECKED_RETRY_MS = 15_000;

export function createPriceGuard(deps: PriceGuardDeps): PriceGuard {
  const { logger } = deps;
  const uncheckedRetryMs = deps.uncheckedRetryMs ?? DEFAULT_UNCHECKED_RETRY_MS;
  const startTimer = deps.startTimer ?? unrefTimeout;
  let verdicts: ReadonlyMap<string, ModelPriceCheck> | undefined;
  let checkedAtMs: number | undefined;
  let inProgress: Promise<PriceCheckOutcome> | undefined;
  let cancelTimer: (() => void) | undefined;
  let started = false;
  let stopped = false;

  async function check(): Promise<PriceCheckOutcome> {
    let service;
    try {
      service = await getService(deps.chain, { provider: deps.providerAddress });
    } catch (err) {
      const error = (err as Error)?.message ?? String(err);
      if (verdicts) {
        logger.warn(`price check: the chain could not be read; the verdicts of ${new Date(checkedAtMs!).toISOString()} stand`, { error });
      } else {
        logger.error(
          'price check: the chain could not be read and no price has been checked yet; 0G-billed requests get 503 chain_unavailable until a check succeeds',
          { error, retryInMs: Math.min(uncheckedRetryMs, deps.checkIntervalMs) },
        );
      }
      return 'chain-unavailable';
    }
    const checks = compareModelPrices({ service, models: deps.models, providerAddress: deps.providerAddress });
    for (const next of checks) logChange(verdicts?.get(next.modelId), next);
    verdicts = new Map(checks.map((c) => [c.modelId, c]));
    checkedAtMs = deps.now();
    return 'checked';
  }

  // Logged when a verdict first appears or changes, not at every check: /readyz shows the standing state.
  function logChange(previous: ModelPriceCheck | undefined, next: ModelPriceCheck): void {
    if (previous !== undefined && previous.agreement === next.agreement && previous.message === next.message) return;
    const fields = {
      model: next.modelId,
      configPriceWei: next.configPriceWei.toString(),
      chainPriceWei: next.chainPriceWei?.toString() ?? null,
      registeredModel: next.registeredModel ?? null,
    };
    if (next.message === undefined) {
      logger.info(`price check: model '${next.modelId}' matches the chain: ${next.configPriceWei} wei per image`, fields);
    } else if (next.billable) {
      logger.warn(`price check: ${next.message}`, fields);
    } else {
      logger.error(`price check: ${next.message}`, fields);
    }
  }

  function checkNow(): Promise<PriceCheckOutcome> {
    inProgress ??= check().finally(() => {
      inProgress = undefined;
    });
    return inProgress;
  }

  function scheduleNext(): void {
    if (stopped) return;
    const delayMs = verdicts ? deps.checkIntervalMs : Math.min(uncheckedRetryMs, deps.checkIntervalMs);
    cancelTimer = startTimer(delayMs, () => {
      cancelTimer = undefined;
      void checkNow().then(scheduleNext);
    });
  }

  return {
    async start() {
      if (started) return;
      started = true;
      await checkNow();
      scheduleNext();
    },
    async stop() {
      stopped = true;
      cancelTimer?.();
      cancelTimer = undefined;
      await inProgress;
    },
    checkNow,
    assertBillable(modelId) {
      if (verdicts === undefined) {
        throw new PixeldError(
          'chain_unavailable',
          `the price of model '${modelId}' has not been checked against this provider's on-chain service yet (the chain could not be read); try again shortly`,
          { retryAfterSeconds: Math.ceil(Math.min(uncheckedRetryMs, deps.checkIntervalMs) / 1000) },
        );
      }
      const verdict = verdicts.get(modelId);
      if (verdict !== undefined && !verdict.billable) throw new PixeldError('model_price_mismatch', refusalForCaller(verdict));
    },
    report() {
      const models: Record<string, ModelPriceStatus> = {};
      for (const model of deps.models) {
        const verdict = verdicts?.get(model.id);
        models[model.id] = verdict
          ? {
              status: verdict.agreement,
              billable: verdict.billable,
              configPriceWei: verdict.configPriceWei.toString(),
              chainPriceWei: verdict.chainPriceWei?.toString() ?? null,
              ...(verdict.message !== undefined ? { message: verdict.message } : {}),
            }
          : {
              status: 'unchecked',
              billable: false,
              configPriceWei: model.pricePerImageWei.toString(),
              chainPriceWei: null,
              message: 'not checked yet: the chain could not be read',
            };
      }
      return { checkedAt: checkedAtMs === undefined ? null : new Date(checkedAtMs).toISOString(), models };
    },
  };
}

/** What a refused 0G caller is told: the public facts (prices are on chain anyway), not the operator's to-do. */
function refusalForCaller(verdict: ModelPriceCheck): string {
  const lead = `model '${verdict.modelId}' is not offered to 0G users by this provider right now`;
  if (verdict.agreement === 'config-above-chain') {
    return `${lead}: its configured price (${verdict.configPriceWei} wei per image) is above the outputPrice its on-chain service advertises (${verdict.chainPriceWei} wei)`;
  }
  return `${lead}: its on-chain service does not advertise this model` + (verdict.registeredModel ? ` (it is registered for '${verdict.registeredModel}')` : '');
}

function unrefTimeout(delayMs: number, onFire: () => void): () => void {
  const timer = setTimeout(onFire, delayMs);
  timer.unref();
  return () => clearTimeout(timer);
}
