import { Contract, Interface, getAddress, verifyTypedData, type Provider, type TypedDataDomain } from 'ethers';
import { getService } from '../chain/get-service.js';
import { SERVING_ABI, SETTLEMENT_EIP712, SETTLEMENT_STATUS, type ChainClient } from '../chain/serving-contract.js';
import { parseReceiptText, type ReceiptJson } from '../tee/receipt.js';
import { isVerified, verifyReceipt } from '../tee/settlement-signer.js';
import { buildUserTree } from './leaf.js';

/**
 * What a user runs to check an on-chain charge against the receipts behind it (issue 15): the
 * `settleFeesWithTEE` transaction is fetched and decoded, the user's item taken, its EIP-712 signature
 * checked against the service's acknowledged `teeSignerAddress` as the contract held it at that block,
 * and the item's requestsHash and totalFee rebuilt from the receipts' signed texts alone — each receipt's
 * signature checked against the same signer, each leaf derived from the text as the settlement signer
 * derives it (verifyReceipt). Nothing the daemon says beside a signed text is trusted.
 */

export interface VerifyChargeParameters {
  /** The settlement transaction. */
  txHash: string;
  /** Whose item to check. */
  user: string;
  /**
   * The receipts the charge should be made of: bare signed receipts (each with `text` and `signature`),
   * or entries as GET /v1/receipts serves them (`{receipt, settlement}`). Of the entries, those whose
   * `settlement.requests_hash` is the item's are taken; bare receipts are all taken.
   */
  receipts: readonly ReceiptInput[];
}

export type ReceiptInput = ReceiptJson | { receipt: ReceiptJson; settlement?: { requests_hash?: string | null } | null };

export interface ChargeCheck {
  name: string;
  ok: boolean;
  /** What was found, or why it fails. */
  detail: string;
}

export interface VerifyChargeReturnType {
  /** true only when every check passed. */
  ok: boolean;
  checks: ChargeCheck[];
  /** The user's item as decoded from the transaction, when one was found. */
  item: { provider: string; nonce: bigint; totalFeeWei: bigint; requestsHash: string } | undefined;
}

export interface VerifyChargeDeps {
  /** Any JSON-RPC provider on the chain the transaction was sent on. */
  provider: Provider;
}

const servingInterface = new Interface(SERVING_ABI);
const STATUS_NAMES = new Map(Object.entries(SETTLEMENT_STATUS).map(([name, code]) => [code, name]));

/** Runs every check it can; a check that cannot run because an earlier one failed is not listed. */
export async function verifyCharge(deps: VerifyChargeDeps, params: VerifyChargeParameters): Promise<VerifyChargeReturnType> {
  const checks: ChargeCheck[] = [];
  const done = (item?: VerifyChargeReturnType['item']): VerifyChargeReturnType => ({ ok: checks.every((c) => c.ok), checks, item });
  const check = (name: string, ok: boolean, detail: string) => {
    checks.push({ name, ok, detail });
    return ok;
  };
  const same = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();

  // 1. The transaction: mined, succeeded, a settleFeesWithTEE call.
  const [tx, mined] = await Promise.all([deps.provider.getTransaction(params.txHash), deps.provider.getTransactionReceipt(params.txHash)]);
  if (!tx || !mined) {
    check('transaction', false, `${params.txHash} is not a mined transaction on this chain`);
    return done();
  }
  const parsed = tx.to ? servingInterface.parseTransaction({ data: tx.data }) : null;
  if (
    !check(
      'transaction',
      mined.status === 1 && parsed?.name === 'settleFeesWithTEE',
      parsed?.name !== 'settleFeesWithTEE'
        ? `${params.txHash} does not call settleFeesWithTEE`
        : mined.status !== 1
          ? `${params.txHash} reverted in block ${mined.blockNumber}: nothing was charged`
          : `settleFeesWithTEE on ${tx.to} from ${tx.from}, block ${mined.blockNumber}`,
    )
  ) {
    return done();
  }
  const contractAddress = getAddress(tx.to!);
  const block = mined.blockNumber;
  // The contract's domain uses block.chainid: the chain's id, whatever the transaction's type recorded.
  const { chainId } = await deps.provider.getNetwork();

  // 2. The user's item.
  const items = (parsed!.args[0] as Array<{ user: string; provider: string; totalFee: bigint; requestsHash: string; nonce: bigint; signature: string }>).filter((i) =>
    same(i.user, params.user),
  );
  if (items.length !== 1) {
    check('item', false, items.length === 0 ? `the transaction has no item for ${params.user}` : `the transaction has ${items.length} items for ${params.user}`);
    return done();
  }
  const raw = items[0]!;
  const item = { provider: getAddress(raw.provider), nonce: BigInt(raw.nonce), totalFeeWei: BigInt(raw.totalFee), requestsHash: String(raw.requestsHash) };
  const user = getAddress(raw.user);
  const outcome = chargeOutcome(mined.logs, contractAddress, user);
  check(
    'item',
    outcome !== undefined && (outcome.status === 0 || outcome.status === 1),
    `nonce ${item.nonce}, totalFee ${item.totalFeeWei} wei, requestsHash ${item.requestsHash}, provider ${item.provider}` +
      (outcome === undefined
        ? ' — no TEESettlementResult for this user in the transaction'
        : outcome.status === 0
          ? ' — SUCCESS: charged in full'
          : outcome.status === 1
            ? ` — PARTIAL: charged ${item.totalFeeWei - outcome.unsettled} wei, ${outcome.unsettled} wei not owed`
            : ` — ${STATUS_NAMES.get(outcome.status) ?? `status ${outcome.status}`}: not charged`),
  );

  // 3. The service's acknowledged TEE signer at that block.
  const client: ChainClient = {
    provider: deps.provider as ChainClient['provider'],
    serving: new Contract(contractAddress, SERVING_ABI, deps.provider),
    chainId: Number(chainId),
    servingAddress: contractAddress,
    close: () => undefined,
  };
  const service = await getService(client, { provider: item.provider, blockTag: block });
  const signer = service?.teeSignerAddress;
  if (
    !check(
      'tee signer',
      service !== undefined && service.teeSignerAcknowledged && BigInt(service.teeSignerAddress) !== 0n,
      service === undefined
        ? `${item.provider} has no service at block ${block}`
        : !service.teeSignerAcknowledged
          ? `the service's TEE signer ${service.teeSignerAddress} was not acknowledged at block ${block}`
          : `${service.teeSignerAddress}, acknowledged at block ${block}`,
    )
  ) {
    return done(item);
  }

  // 4. The item's EIP-712 signature.
  const domain: TypedDataDomain = { name: SETTLEMENT_EIP712.domain.name, version: SETTLEMENT_EIP712.domain.version, chainId, verifyingContract: contractAddress };
  let recovered: string;
  try {
    recovered = verifyTypedData(domain, SETTLEMENT_EIP712.types, { requestsHash: item.requestsHash, nonce: item.nonce, provider: item.provider, user, totalFee: item.totalFeeWei }, raw.signature);
  } catch (err) {
    recovered = `nobody (${(err as Error).message.split('\n')[0]})`;
  }
  check('item signature', same(recovered, signer!), same(recovered, signer!) ? `EIP-712 by ${signer}` : `the EIP-712 signature recovers to ${recovered}, not the TEE signer ${signer}`);

  // 5. The receipts: which are for this item, each signed by that signer for this user and provider.
  const taken = params.receipts.flatMap((r) => {
    if ('text' in r) return [r];
    return r.settlement?.requests_hash && same(r.settlement.requests_hash, item.requestsHash) ? [r.receipt] : [];
  });
  const leaves = [];
  const problems: string[] = [];
  let total = 0n;
  const seqs = new Map<string, string>();
  for (const receipt of taken) {
    const jobId = (typeof receipt.text === 'string' ? parseReceiptText(receipt.text)?.job : undefined) ?? String(receipt.job);
    const verified = verifyReceipt(jobId, receipt, { signer: signer!, user, provider: item.provider });
    if (!isVerified(verified)) {
      problems.push(`${jobId}: ${verified.reason.replace('this TEE key', 'the TEE signer')}`);
      continue;
    }
    const seq = verified.fields.seq.toString();
    if (seqs.has(seq)) problems.push(`${jobId}: sequence ${seq} again (also ${seqs.get(seq)})`);
    seqs.set(seq, jobId);
    leaves.push(verified.leaf);
    total += verified.fields.feeWei;
  }
  check(
    'receipts',
    taken.length > 0 && problems.length === 0,
    taken.length === 0
      ? `none of the ${params.receipts.length} receipts given are for this item`
      : problems.length === 0
        ? `${taken.length} receipts, each signed by ${signer} for ${user}`
        : `${problems.length} of ${taken.length} receipts fail: ${problems.join('; ')}`,
  );
  if (leaves.length === 0) return done(item);

  // 6. The Merkle root of their leaves, the highest sequence number, and the fee.
  const root = buildUserTree(leaves).root;
  check(
    'requestsHash',
    same(root, item.requestsHash),
    same(root, item.requestsHash)
      ? `the ${leaves.length} receipts' leaves rebuild ${root}`
      : `the ${leaves.length} valid receipts' leaves rebuild ${root}, not the item's ${item.requestsHash} (a receipt missing, added or altered)`,
  );
  const highest = leaves.reduce((max, l) => (BigInt(l[8]) > max ? BigInt(l[8]) : max), 0n);
  check('nonce', highest === item.nonce, highest === item.nonce ? `the highest receipt sequence number is the item's nonce ${item.nonce}` : `the highest receipt sequence number is ${highest}, the item's nonce ${item.nonce}`);
  check('totalFee', total === item.totalFeeWei, total === item.totalFeeWei ? `${total} wei = the receipts' fees` : `the item charges ${item.totalFeeWei} wei, the receipts' fees add up to ${total} wei`);
  return done(item);
}

/** The contract's TEESettlementResult for the user in the transaction's logs. */
function chargeOutcome(logs: ReadonlyArray<{ address: string; topics: readonly string[]; data: string }>, contract: string, user: string) {
  for (const log of logs) {
    if (log.address.toLowerCase() !== contract.toLowerCase()) continue;
    const event = servingInterface.parseLog({ topics: [...log.topics], data: log.data });
    if (event?.name === 'TEESettlementResult' && String(event.args.user).toLowerCase() === user.toLowerCase()) {
      return { status: Number(event.args.status), unsettled: BigInt(event.args.unsettledAmount) };
    }
  }
  return undefined;
}
