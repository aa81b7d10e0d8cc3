import type { BatchItem, ItemResult } from './store.js';

/**
 * A settlement batch's items and results as both stores keep them: JSON text, amounts as decimal strings
 * (wei does not fit a JS number, and JSON has no bigint).
 */

interface StoredItem extends Omit<BatchItem, 'nonce' | 'totalFeeWei'> {
  nonce: string;
  totalFeeWei: string;
}

interface StoredResult extends Omit<ItemResult, 'unsettledWei'> {
  unsettledWei: string;
}

export function itemsToJson(items: readonly BatchItem[]): string {
  return JSON.stringify(items.map((i): StoredItem => ({ ...i, nonce: i.nonce.toString(), totalFeeWei: i.totalFeeWei.toString() })));
}

export function itemsFromJson(text: string): BatchItem[] {
  return (JSON.parse(text) as StoredItem[]).map((i) => ({ ...i, nonce: BigInt(i.nonce), totalFeeWei: BigInt(i.totalFeeWei) }));
}

export function resultsToJson(results: readonly ItemResult[]): string {
  return JSON.stringify(results.map((r): StoredResult => ({ ...r, unsettledWei: r.unsettledWei.toString() })));
}

export function resultsFromJson(text: string): ItemResult[] {
  return (JSON.parse(text) as StoredResult[]).map((r) => ({ ...r, unsettledWei: BigInt(r.unsettledWei) }));
}
