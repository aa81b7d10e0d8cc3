import { createHash } from 'node:crypto';
import { StandardMerkleTree } from '@openzeppelin/merkle-tree';
import { receiptFieldsOf, type ReceiptFields, type ReceiptJson } from '../tee/receipt.js';

/**
 * The billing leaf of a receipt: the ABI encoding of its signed fields, so every wei billed traces to a
 * receipt the TEE key signed (tee.md §3, billing.md). Hashed by OpenZeppelin's StandardMerkleTree
 * (double keccak of the ABI encoding), never by hand.
 */

export const LEAF_TYPES = ['bytes32', 'address', 'address', 'bytes32', 'bytes32', 'uint256', 'uint256', 'uint256', 'uint256'] as const;
export const LEAF_FIELDS = ['job', 'user', 'provider', 'request_sha256', 'images_sha256', 'images', 'fee_wei', 'created', 'seq'] as const;

/** Leaf values in LEAF_TYPES order; numbers as decimal strings so they survive JSON. */
export type LeafValues = [string, string, string, string, string, string, string, string, string];

/** The job id's 16 random bytes, left-padded into a bytes32 (`job_<32 hex>` → 0x000…<32 hex>). */
export function jobIdAsBytes32(jobId: string): string {
  const match = /^job_([0-9a-f]{32})$/.exec(jobId);
  if (!match) throw new Error(`not a job id: ${jobId}`);
  return `0x${'0'.repeat(32)}${match[1]}`;
}

/** sha256 over the delivered images' 32-byte hashes, concatenated in order. */
export function imagesHashOf(imageSha256: readonly string[]): string {
  return `0x${createHash('sha256').update(Buffer.concat(imageSha256.map((h) => Buffer.from(h, 'hex')))).digest('hex')}`;
}

/** The leaf of a receipt's signed fields; v1 receipts (no sequence number) have none: they are never settled. */
export function leafOf(fields: ReceiptFields): LeafValues {
  if (fields.seq === undefined) throw new Error(`receipt of ${fields.job} has no sequence number (v1): it has no billing leaf`);
  return [
    jobIdAsBytes32(fields.job),
    fields.user,
    fields.provider,
    `0x${fields.requestSha256}`,
    imagesHashOf(fields.imageSha256),
    String(fields.imageSha256.length),
    fields.feeWei.toString(),
    String(fields.created),
    fields.seq.toString(),
  ];
}

export function receiptLeaf(receipt: ReceiptJson): LeafValues {
  return leafOf(receiptFieldsOf(receipt));
}

export interface UserTree {
  /** The requestsHash sent on chain for this user and round. */
  root: string;
  /** Merkle proof of each leaf, in the order given. */
  proofs: string[][];
}

/** One user's receipts of one round as a StandardMerkleTree. */
export function buildUserTree(leaves: readonly LeafValues[]): UserTree {
  const tree = StandardMerkleTree.of(leaves.map((l) => [...l]), [...LEAF_TYPES]);
  return { root: tree.root, proofs: leaves.map((_, i) => tree.getProof(i)) };
}

/** Checks a served proof: what a user does to see a charge is made of receipts they were given. */
export function verifyLeaf(root: string, leaf: LeafValues, proof: string[]): boolean {
  return StandardMerkleTree.verify(root, [...LEAF_TYPES], [...leaf], proof);
}

/** The leaf's hash as the tree computes it (keccak256(keccak256(abi.encode(values)))). */
export function leafHashOf(leaf: LeafValues): string {
  return StandardMerkleTree.of([[...leaf]], [...LEAF_TYPES]).leafHash([...leaf]);
}
