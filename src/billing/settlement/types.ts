import type { Signer } from 'ethers';
import type { ChainClient } from '../../chain/serving-contract.js';
import type { Config } from '../../config/schema.js';
import type { Logger } from '../../obs/logger.js';
import type { TeeKeyProvider } from '../../tee/key-provider.js';
import type { SettlementSigner } from '../../tee/settlement-signer.js';
import type { BillingStore } from '../store.js';

/** InferenceServing's per-item settlement statuses (0g-provider-protocol.md §5), by code. */
export const STATUS_NAMES = ['SUCCESS', 'PARTIAL', 'PROVIDER_MISMATCH', 'NO_TEE_SIGNER', 'INVALID_NONCE', 'INVALID_SIGNATURE'] as const;
export type StatusName = (typeof STATUS_NAMES)[number];
/** Statuses after which the receipts are still owed: they go back to unsettled and raise an alert. */
export type FailureStatus = Exclude<StatusName, 'SUCCESS' | 'PARTIAL'>;

export function statusName(code: number): StatusName {
  const name = STATUS_NAMES[code];
  if (name === undefined) throw new Error(`unknown settlement status ${code}`);
  return name;
}

export interface SettlerDeps {
  billing: BillingStore;
  chain: ChainClient;
  /** The provider wallet: signs and pays for the transactions, receives the fees. Never the TEE key. */
  wallet: Pick<Signer, 'signTransaction'>;
  /** The provider wallet's address (msg.sender of every settlement). */
  providerAddress: string;
  /** Signs each item's EIP-712 TEESettlement, through the SettlementSigner and its journal (journalDir). */
  tee: Pick<TeeKeyProvider, 'signer' | 'address' | 'journalDir'>;
  /**
   * Told each time a settlement is mined, with the users it covered and its block: their cached balances
   * are stale from then on. Admission does not depend on it (it counts receipts settled after the block
   * its balance was read at), but it saves a user a refusal.
   */
  onSettled?: (users: readonly string[], block: number) => void;
  billingConfig: Readonly<Config['billing']>;
  logger: Logger;
  now?: () => number;
  /** How often a sent transaction is looked for. @default 1_000 */
  pollIntervalMs?: number;
  /** A round stops waiting for its transaction after this long; the next round picks it up. @default 10 × billingConfig.txReplaceAfterMs */
  maxTxWaitMs?: number;
  /** Blocks searched for an item's TEESettlementResult when its transaction hash is unknown. @default 10_000 */
  logLookbackBlocks?: number;
  /** Lock holder id (tells settlers sharing a store apart). @default `settler-<pid>-<random>` */
  holder?: string;
}

/** What became of one user's item. */
export type UserOutcome =
  /** SUCCESS on chain. */
  | 'settled'
  /** PARTIAL on chain: the balance was paid, the shortfall is recorded and the user blocked. */
  | 'partial'
  /** The chain refused the item (status says why); its receipts are unsettled again. */
  | 'refused'
  /** previewSettlementResults said it would fail (status says why); not sent, receipts stay unsettled. */
  | 'dropped'
  /** Sent, not mined yet: the next round (or start-up) looks at it again. */
  | 'pending'
  /** Nothing of it reached the chain (e.g. the transaction reverted): receipts unsettled again. */
  | 'abandoned'
  /** --dry-run: what the preview says would happen. */
  | 'preview';

export interface UserSettlement {
  user: string;
  receipts: number;
  amountWei: bigint;
  nonce: bigint;
  outcome: UserOutcome;
  /** The chain's (or the preview's) status, when there is one. */
  status: StatusName | undefined;
  /** For PARTIAL: the part of amountWei the balance did not cover (not owed on chain). */
  shortfallWei: bigint | undefined;
  txHash: string | undefined;
  block: number | undefined;
  batchId: string | undefined;
}

export interface RoundOptions {
  /** Prepare and preview only: nothing persisted, nothing sent, no lock taken. */
  dryRun?: boolean;
  /** Settle only these users (the threshold trigger); default everyone with unsettled receipts. */
  users?: readonly string[];
  /** Human-readable lines while the round runs (the CLI prints them). */
  onProgress?: (line: string) => void;
  /** Why the round runs, for the logs: `cron`, `threshold`, `cli`, … */
  reason?: string;
}

export interface RoundResult {
  /**
   * `completed`: every step ran (items may still have failed: see users); `locked`: another settler holds
   * the lock; `busy`: this settler is already running a round; `interrupted`: ended early (chain
   * unavailable, lock lost, shutting down) — what was left is picked up by the next round.
   */
  outcome: 'completed' | 'locked' | 'busy' | 'interrupted';
  error: string | undefined;
  dryRun: boolean;
  /** Open batches of earlier rounds resolved (or looked at) first. */
  reconciled: UserSettlement[];
  users: UserSettlement[];
  /** Mined settlement transactions of this round, in order. */
  transactions: string[];
}

export interface ReconcileResult {
  outcome: 'completed' | 'locked' | 'busy' | 'interrupted';
  error: string | undefined;
  /** Open batches found. */
  batches: number;
  users: UserSettlement[];
}

/** Counters for metrics; they only grow. */
export interface SettlementCounters {
  rounds: number;
  /** Rounds that did not run because another settler held the lock. */
  roundsLocked: number;
  /** Rounds ended early (chain unavailable, lock lost, shutdown). */
  roundsInterrupted: number;
  transactionsSent: number;
  /** Re-sends of a pending transaction with higher fees. */
  replacements: number;
  transactionsReverted: number;
  batchesReconciled: number;
  receiptsSettled: number;
  receiptsPartial: number;
  settledWei: bigint;
  shortfallWei: bigint;
  /** Items refused by the chain or dropped after the preview, by status: each one is an alert. */
  failures: Record<FailureStatus, number>;
}

/** SettlerDeps with every default filled in. */
export type ResolvedSettlerDeps = SettlerDeps &
  Required<Pick<SettlerDeps, 'now' | 'pollIntervalMs' | 'maxTxWaitMs' | 'logLookbackBlocks' | 'holder'>> & {
    settlementSigner: SettlementSigner;
  };

/** What the steps of a round share with the settler running it. */
export interface RoundContext {
  deps: ResolvedSettlerDeps;
  counters: SettlementCounters;
  progress(line: string): void;
  /** Aborted when the settler stops: waits end at once. */
  signal: AbortSignal;
  /** Throws RoundInterrupted when the settler is stopping or has lost its lock. */
  checkAlive(): void;
  /** Renews the lock now (before anything is sent); throws RoundInterrupted if another settler has it. */
  renewLock(): Promise<void>;
}

/** Ends a round early; whatever it left open is reconciled by the next one. */
export class RoundInterrupted extends Error {
  override readonly name = 'RoundInterrupted';
}

/** The provider wallet cannot pay for a settlement transaction (gas): the operator must top it up. */
export class WalletUnfundedError extends Error {
  override readonly name = 'WalletUnfundedError';
}
