import cron, { type ScheduledTask } from 'node-cron';
import { isAddress } from 'ethers';
import { activeRefunds } from '../../chain/get-account.js';
import { chainUnavailable } from '../../chain/errors.js';
import type { ChainClient } from '../../chain/serving-contract.js';
import type { Config } from '../../config/schema.js';
import { PixeldError } from '../../errors.js';
import type { Logger } from '../../obs/logger.js';
import type { BillingStore } from '../store.js';
import { readAccounts } from './chain-reads.js';
import type { Settler } from './settler.js';

/**
 * When rounds run: on the cron schedule (billing.settlementCron), and early for any user who should not
 * wait — unsettled fees at billing.userThresholdWei, or at lowBalancePercent of what their account still
 * holds, or a refund of theirs about to become withdrawable (after which the fees could no longer be
 * taken from it). Rounds never overlap: the settler's lock refuses a second one.
 */

export interface SettlementTriggersDeps {
  settler: Settler;
  billing: BillingStore;
  chain: ChainClient;
  providerAddress: string;
  billingConfig: Readonly<Config['billing']>;
  logger: Logger;
}

export type DueReason = 'threshold' | 'low-balance' | 'refund';

export interface DueUser {
  user: string;
  unsettledWei: bigint;
  reason: DueReason;
}

export interface SettlementTriggers {
  start(): void;
  /** Stops the schedule and the checks, and waits for a round they started. */
  stop(): Promise<void>;
  /** The early-settlement check, once: settles the users that are due now and returns them. */
  checkNow(): Promise<DueUser[]>;
}

/** Whether node-cron accepts the expression: checked at start-up rather than at the first tick. */
export function validateSettlementCron(expression: string): boolean {
  return cron.validate(expression);
}

/**
 * When the schedule next starts a round, as the daemon's task computes it (node-cron, this process's time
 * zone); undefined for an expression node-cron refuses. The task is made only to ask, and destroyed at once.
 */
export function nextScheduledRound(expression: string): Date | undefined {
  if (!cron.validate(expression)) return undefined;
  const task = cron.createTask(expression, () => undefined);
  try {
    return task.getNextRuns(1)[0];
  } finally {
    void task.destroy();
  }
}

export function createSettlementTriggers(deps: SettlementTriggersDeps): SettlementTriggers {
  const { settler, logger, billingConfig } = deps;
  let task: ScheduledTask | undefined;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> | undefined;
  /** lockTime() never changes after deployment: read it once. */
  let lockTimeSeconds: bigint | undefined;

  /** Remembers a round the triggers started, so stop() can wait for it. */
  const track = <T>(work: Promise<T>): Promise<T> => {
    const settled = work.then(
      () => undefined,
      () => undefined,
    );
    running = settled;
    void settled.then(() => {
      if (running === settled) running = undefined;
    });
    return work;
  };

  const scheduledRound = async () => {
    try {
      await track(settler.runRound({ reason: 'cron' }));
    } catch (err) {
      logger.error('settlement: scheduled round failed', { error: (err as Error)?.stack ?? String(err) });
    }
  };

  async function dueUsers(): Promise<DueUser[]> {
    const owing = (await deps.billing.usersWithUnsettled()).filter((u) => isAddress(u.user));
    if (owing.length === 0) return [];
    const accounts = await readAccounts(deps.chain, deps.providerAddress, owing.map((u) => u.user));
    let chainNowSeconds: bigint | undefined;
    const due: DueUser[] = [];
    for (const { user, feeWei } of owing) {
      const account = accounts.get(user.toLowerCase());
      // Without an account, or with nothing left in it, a settlement cannot collect anything now.
      if (!account || account.balance === 0n) continue;
      if (feeWei >= billingConfig.userThresholdWei) {
        due.push({ user, unsettledWei: feeWei, reason: 'threshold' });
        continue;
      }
      const available = account.balance - account.pendingRefund;
      if (feeWei * 100n >= BigInt(billingConfig.lowBalancePercent) * (available > 0n ? available : 0n)) {
        due.push({ user, unsettledWei: feeWei, reason: 'low-balance' });
        continue;
      }
      const refunds = activeRefunds(account);
      if (refunds.length === 0) continue;
      lockTimeSeconds ??= await readLockTime(deps.chain);
      // Refunds unlock on the chain's clock, not ours.
      chainNowSeconds ??= await latestBlockTime(deps.chain);
      const guardSeconds = BigInt(Math.ceil(billingConfig.refundGuardMs / 1000));
      if (refunds.some((r) => r.createdAt + lockTimeSeconds! - chainNowSeconds! <= guardSeconds)) {
        due.push({ user, unsettledWei: feeWei, reason: 'refund' });
      }
    }
    return due;
  }

  async function checkNow(): Promise<DueUser[]> {
    const due = await dueUsers();
    if (due.length > 0) {
      logger.info('settlement: settling users early', { users: due.map((d) => ({ user: d.user, reason: d.reason, unsettledWei: d.unsettledWei.toString() })) });
      await track(settler.runRound({ users: due.map((d) => d.user), reason: 'threshold' }));
    }
    return due;
  }

  const periodicCheck = async () => {
    if (settler.running) return;
    try {
      await checkNow();
    } catch (err) {
      if (err instanceof PixeldError && err.code === 'chain_unavailable') {
        logger.warn('settlement: threshold check skipped, the chain is unavailable', { error: err.message });
      } else {
        logger.error('settlement: threshold check failed', { error: (err as Error)?.stack ?? String(err) });
      }
    }
  };

  return {
    start() {
      if (task) return;
      task = cron.createTask(billingConfig.settlementCron, scheduledRound, { name: 'pixeld-settlement', noOverlap: true });
      void task.start();
      timer = setInterval(() => void periodicCheck(), billingConfig.thresholdCheckIntervalMs);
      timer.unref();
    },
    async stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
      await task?.destroy();
      task = undefined;
      await running?.catch(() => undefined);
    },
    checkNow,
  };
}

async function readLockTime(chain: ChainClient): Promise<bigint> {
  try {
    return BigInt((await chain.serving.getFunction('lockTime').staticCall()) as bigint);
  } catch (err) {
    throw chainUnavailable('lockTime', err);
  }
}

async function latestBlockTime(chain: ChainClient): Promise<bigint> {
  try {
    const block = await chain.provider.getBlock('latest');
    if (!block) throw new Error('no latest block');
    return BigInt(block.timestamp);
  } catch (err) {
    throw chainUnavailable('getBlock(latest)', err);
  }
}
