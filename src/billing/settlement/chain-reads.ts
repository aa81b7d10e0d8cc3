import { zeroPadValue, type Log, type TransactionReceipt } from 'ethers';
import { toServingAccount, type ServingAccount } from '../../chain/get-account.js';
import { chainUnavailable } from '../../chain/errors.js';
import type { ChainClient } from '../../chain/serving-contract.js';
import type { BatchItem, ItemResult } from '../store.js';

/**
 * The settlement engine's reads of InferenceServing: accounts in bulk, the preview, the per-item results
 * a mined transaction reports, and — when a transaction's hash was lost — the transaction that carried an
 * item. Anything but an answer from the chain becomes `chain_unavailable`, which ends a round early.
 */

/** getBatchAccountsByUsers takes at most this many users per call (the contract's MAX_BATCH_USERS). */
const ACCOUNTS_PER_CALL = 500;

/** The TEESettlementData tuple, in the ABI's field order. */
export function contractItem(item: BatchItem, providerAddress: string): [string, string, bigint, string, bigint, string] {
  return [item.user, providerAddress, item.totalFeeWei, item.requestsHash, item.nonce, item.signature];
}

/**
 * The provider's accounts with these users, keyed by lower-case address; a user without an account is
 * absent. Read as the provider (msg.sender), as the contract requires.
 */
export async function readAccounts(
  chain: ChainClient,
  providerAddress: string,
  users: readonly string[],
  blockTag?: number,
): Promise<Map<string, ServingAccount>> {
  const accounts = new Map<string, ServingAccount>();
  for (let i = 0; i < users.length; i += ACCOUNTS_PER_CALL) {
    const chunk = users.slice(i, i + ACCOUNTS_PER_CALL);
    let raw: Iterable<Record<string, unknown>>;
    try {
      raw = (await chain.serving
        .getFunction('getBatchAccountsByUsers')
        .staticCall(chunk, { from: providerAddress, ...(blockTag === undefined ? {} : { blockTag }) })) as Iterable<Record<string, unknown>>;
    } catch (err) {
      throw chainUnavailable('getBatchAccountsByUsers', err);
    }
    let index = 0;
    for (const entry of raw) {
      const account = toServingAccount(entry);
      const user = chunk[index++]!;
      // The contract answers an all-zero Account for a user with no account.
      if (!/^0x0{40}$/i.test(account.user)) accounts.set(user.toLowerCase(), account);
    }
  }
  return accounts;
}

export interface Preview {
  /** Items that would fail, by lower-case user, with the status code. */
  failed: Map<string, number>;
  /** Items the balance would not fully cover, by lower-case user, with the shortfall. */
  partial: Map<string, bigint>;
}

/** previewSettlementResults from the provider address: what settleFeesWithTEE would do now. */
export async function previewSettlement(chain: ChainClient, providerAddress: string, items: readonly BatchItem[]): Promise<Preview> {
  let result: [string[], bigint[], string[], bigint[]];
  try {
    result = (await chain.serving
      .getFunction('previewSettlementResults')
      .staticCall(
        items.map((i) => contractItem(i, providerAddress)),
        { from: providerAddress },
      )) as unknown as [string[], bigint[], string[], bigint[]];
  } catch (err) {
    throw chainUnavailable('previewSettlementResults', err);
  }
  const [failedUsers, reasons, partialUsers, amounts] = result;
  const failed = new Map<string, number>();
  failedUsers.forEach((u, i) => failed.set(u.toLowerCase(), Number(reasons[i])));
  const partial = new Map<string, bigint>();
  partialUsers.forEach((u, i) => partial.set(u.toLowerCase(), BigInt(amounts[i]!)));
  return { failed, partial };
}

/** The TEESettlementResult events of a mined settlement transaction, in item order. */
export function settlementResultsOf(chain: ChainClient, receipt: Pick<TransactionReceipt, 'logs'>): ItemResult[] {
  const results: ItemResult[] = [];
  for (const log of receipt.logs) {
    const event = parseSettlementLog(chain, log);
    if (event) results.push(event);
  }
  return results;
}

function parseSettlementLog(chain: ChainClient, log: Pick<Log, 'address' | 'topics' | 'data'>): ItemResult | undefined {
  if (log.address.toLowerCase() !== chain.servingAddress.toLowerCase()) return undefined;
  const parsed = chain.serving.interface.parseLog({ topics: [...log.topics], data: log.data });
  if (!parsed || parsed.name !== 'TEESettlementResult') return undefined;
  return { user: String(parsed.args[0]), status: Number(parsed.args[1]), unsettledWei: BigInt(parsed.args[2] as bigint) };
}

/** The settlement items a transaction carried, decoded from its calldata (undefined if it is not a settlement). */
export function decodeSettlementCall(chain: ChainClient, data: string): Array<{ user: string; provider: string; nonce: bigint; requestsHash: string; totalFeeWei: bigint }> | undefined {
  let parsed;
  try {
    parsed = chain.serving.interface.parseTransaction({ data });
  } catch {
    return undefined;
  }
  if (!parsed || parsed.name !== 'settleFeesWithTEE') return undefined;
  return Array.from(parsed.args[0] as Iterable<Record<string, unknown>>, (s) => ({
    user: String(s.user),
    provider: String(s.provider),
    nonce: BigInt(s.nonce as bigint),
    requestsHash: String(s.requestsHash),
    totalFeeWei: BigInt(s.totalFee as bigint),
  }));
}

/**
 * Finds the mined transaction that carried exactly this item (same user, nonce and requestsHash, sent by
 * the provider) by its TEESettlementResult events in the last `lookbackBlocks` blocks. Used when a batch
 * was prepared but its transaction hash never recorded.
 */
export async function findItemTransaction(
  chain: ChainClient,
  providerAddress: string,
  item: Pick<BatchItem, 'user' | 'nonce' | 'requestsHash'>,
  lookbackBlocks: number,
  /** The node must have reached this block, or the search is not trusted. */
  minBlock?: number,
): Promise<TransactionReceipt | undefined> {
  const topic = chain.serving.interface.getEvent('TEESettlementResult')!.topicHash;
  let logs: Log[];
  try {
    const latest = await chain.provider.getBlockNumber();
    if (minBlock !== undefined && latest < minBlock) throw new Error(`the node is at block ${latest}, behind block ${minBlock}`);
    logs = await chain.provider.getLogs({
      address: chain.servingAddress,
      topics: [topic, zeroPadValue(item.user, 32)],
      fromBlock: Math.max(0, latest - lookbackBlocks),
      toBlock: latest,
    });
  } catch (err) {
    throw chainUnavailable('getLogs(TEESettlementResult)', err);
  }
  const seen = new Set<string>();
  // Newest first: a batch being reconciled is recent.
  for (const log of [...logs].reverse()) {
    if (seen.has(log.transactionHash)) continue;
    seen.add(log.transactionHash);
    let tx;
    try {
      tx = await chain.provider.getTransaction(log.transactionHash);
    } catch (err) {
      throw chainUnavailable('getTransaction', err);
    }
    if (!tx || tx.from.toLowerCase() !== providerAddress.toLowerCase()) continue;
    const carried = decodeSettlementCall(chain, tx.data);
    const match = carried?.some(
      (c) => c.user.toLowerCase() === item.user.toLowerCase() && c.nonce === item.nonce && c.requestsHash.toLowerCase() === item.requestsHash.toLowerCase(),
    );
    if (!match) continue;
    try {
      const receipt = await chain.provider.getTransactionReceipt(log.transactionHash);
      if (receipt) return receipt;
    } catch (err) {
      throw chainUnavailable('getTransactionReceipt', err);
    }
  }
  return undefined;
}

export interface UserSettlementOnChain {
  txHash: string;
  block: number;
  nonce: bigint;
  requestsHash: string;
  totalFeeWei: bigint;
  status: number;
}

/**
 * Every settlement of this user's account sent by the provider in the last `lookbackBlocks` blocks, with
 * the status the chain gave it, lowest nonce first: what a rolled-back database is reconciled against.
 */
export async function findUserSettlements(
  chain: ChainClient,
  providerAddress: string,
  user: string,
  lookbackBlocks: number,
): Promise<UserSettlementOnChain[]> {
  const topic = chain.serving.interface.getEvent('TEESettlementResult')!.topicHash;
  let logs: Log[];
  try {
    const latest = await chain.provider.getBlockNumber();
    logs = await chain.provider.getLogs({
      address: chain.servingAddress,
      topics: [topic, zeroPadValue(user, 32)],
      fromBlock: Math.max(0, latest - lookbackBlocks),
      toBlock: latest,
    });
  } catch (err) {
    throw chainUnavailable('getLogs(TEESettlementResult)', err);
  }
  const found: UserSettlementOnChain[] = [];
  const byTx = new Map<string, Log[]>();
  for (const log of logs) byTx.set(log.transactionHash, [...(byTx.get(log.transactionHash) ?? []), log]);
  for (const [hash, txLogs] of byTx) {
    let tx;
    try {
      tx = await chain.provider.getTransaction(hash);
    } catch (err) {
      throw chainUnavailable('getTransaction', err);
    }
    if (!tx || tx.from.toLowerCase() !== providerAddress.toLowerCase()) continue;
    const mine = (decodeSettlementCall(chain, tx.data) ?? []).filter((c) => c.user.toLowerCase() === user.toLowerCase());
    // The contract emits one result per item, in item order: the user's n-th item has the user's n-th event.
    mine.forEach((item, i) => {
      const log = txLogs[i];
      const result = log && parseSettlementLog(chain, log);
      if (!result) return;
      found.push({ txHash: hash, block: log.blockNumber, nonce: item.nonce, requestsHash: item.requestsHash, totalFeeWei: item.totalFeeWei, status: result.status });
    });
  }
  return found.sort((a, b) => (a.nonce < b.nonce ? -1 : a.nonce > b.nonce ? 1 : 0));
}
