import { closeSync, fsyncSync, openSync, readFileSync, renameSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { LeafValues } from '../billing/leaf.js';

/**
 * What the TEE key has signed for settlement, per user, kept where the key is kept (TeeKeyProvider
 * .journalDir) — never trusted from the operator's database. Two facts per user:
 * - `signedNonce`: the highest settlement nonce ever signed. A new item only covers receipts numbered
 *   above it, so no receipt is in two signed items, whatever the database or the RPC node claims.
 * - `outstanding`: the last signed item until the chain shows its nonce reached. While it is open nothing
 *   new is signed for the user; the same item is sent again instead (it can land at most once).
 * Written atomically and synced before a signature is handed out.
 */

export const JOURNAL_FILE = 'settlement-journal.json';

export interface JournalItem {
  user: string;
  nonce: bigint;
  totalFeeWei: bigint;
  requestsHash: string;
  signature: string;
  /** The receipts it covers, with their leaves: enough to rebuild every proof without the database. */
  receipts: Array<{ jobId: string; leaf: LeafValues }>;
}

interface UserEntry {
  signedNonce: bigint;
  outstanding: JournalItem | undefined;
}

interface StoredItem extends Omit<JournalItem, 'nonce' | 'totalFeeWei'> {
  nonce: string;
  totalFeeWei: string;
}

interface StoredFile {
  version: 1;
  signer: string;
  users: Record<string, { signedNonce: string; outstanding?: StoredItem }>;
}

export class SettlementJournal {
  private users = new Map<string, UserEntry>();
  private loadedMtimeMs = -1;
  readonly file: string;

  constructor(
    dir: string,
    /** The key's address: a journal of another key (a rotated tdx key) says nothing about this one. */
    private readonly signer: string,
  ) {
    this.file = path.join(dir, JOURNAL_FILE);
    this.reload();
  }

  /** The user's receipts must be numbered above this to be settleable. */
  floorFor(user: string): bigint {
    this.reload();
    return this.users.get(user.toLowerCase())?.signedNonce ?? 0n;
  }

  outstanding(user: string): JournalItem | undefined {
    this.reload();
    return this.users.get(user.toLowerCase())?.outstanding;
  }

  /**
   * The chain shows the user's nonce at `chainNonce`. Receipts at or below it can never be paid again, so
   * the floor rises to it (new receipts are numbered above it); an outstanding item at or below it has
   * landed (it is the only item signed with such a nonce that is not older): nothing is outstanding any
   * more. A node that overstates the nonce can only cost the provider receipts, never charge a user twice.
   */
  observeChainNonce(user: string, chainNonce: bigint): void {
    this.reload();
    const key = user.toLowerCase();
    const entry = this.users.get(key) ?? { signedNonce: 0n, outstanding: undefined };
    const landed = entry.outstanding !== undefined && chainNonce >= entry.outstanding.nonce;
    if (!landed && chainNonce <= entry.signedNonce) return;
    if (landed) entry.outstanding = undefined;
    if (chainNonce > entry.signedNonce) entry.signedNonce = chainNonce;
    this.users.set(key, entry);
    this.write();
  }

  /** Records newly signed items, durably, before their signatures leave the signer. */
  recordSigned(items: readonly JournalItem[]): void {
    if (items.length === 0) return;
    this.reload();
    for (const item of items) {
      const key = item.user.toLowerCase();
      const entry = this.users.get(key);
      if (entry?.outstanding) throw new Error(`settlement journal: ${item.user} already has an outstanding item`);
      if (entry && item.nonce <= entry.signedNonce) {
        throw new Error(`settlement journal: nonce ${item.nonce} for ${item.user} is not above ${entry.signedNonce}`);
      }
      this.users.set(key, { signedNonce: item.nonce, outstanding: item });
    }
    this.write();
  }

  private reload(): void {
    let mtimeMs: number;
    try {
      mtimeMs = statSync(this.file).mtimeMs;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    if (mtimeMs === this.loadedMtimeMs) return;
    const stored = JSON.parse(readFileSync(this.file, 'utf8')) as StoredFile;
    this.loadedMtimeMs = mtimeMs;
    if (stored.signer.toLowerCase() !== this.signer.toLowerCase()) return;
    this.users = new Map(
      Object.entries(stored.users).map(([user, e]) => [
        user,
        {
          signedNonce: BigInt(e.signedNonce),
          outstanding: e.outstanding && { ...e.outstanding, nonce: BigInt(e.outstanding.nonce), totalFeeWei: BigInt(e.outstanding.totalFeeWei) },
        },
      ]),
    );
  }

  private write(): void {
    const stored: StoredFile = { version: 1, signer: this.signer, users: {} };
    for (const [user, e] of this.users) {
      stored.users[user] = {
        signedNonce: e.signedNonce.toString(),
        ...(e.outstanding
          ? { outstanding: { ...e.outstanding, nonce: e.outstanding.nonce.toString(), totalFeeWei: e.outstanding.totalFeeWei.toString() } }
          : {}),
      };
    }
    const temp = `${this.file}.${process.pid}.tmp`;
    const fd = openSync(temp, 'w', 0o600);
    try {
      writeSync(fd, JSON.stringify(stored));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, this.file);
    const dir = openSync(path.dirname(this.file), 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
    this.loadedMtimeMs = statSync(this.file).mtimeMs;
  }
}
