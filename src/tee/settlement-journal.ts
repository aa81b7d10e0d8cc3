import { closeSync, fsyncSync, openSync, readFileSync, renameSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { LeafValues } from '../billing/leaf.js';

/**
 * What the TEE key has signed for settlement, per user, kept where the key is kept (TeeKeyProvider
 * .journalDir) — never trusted from the operator's database. Two facts per user:
 * - `signedNonce`: the highest settlement nonce known signed with this key — by this process, or by
 *   another settler sharing the key (a replica) whose item the database records and the signer verified.
 *   A new item only covers receipts numbered above it, so no receipt is in two signed items.
 * - `outstanding`: the items signed and not yet reached by the chain's nonce, lowest nonce first. While
 *   one is open nothing new is signed for the user; the same items are sent again instead (each can land
 *   at most once). Usually one; several only when items signed elsewhere are adopted beside this
 *   process's own.
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
  /** Lowest nonce first. */
  outstanding: JournalItem[];
  /** Items retired (never to be sent) while the chain's nonce is below them, as `<nonce>:<signature>`. */
  retired: string[];
}

interface StoredItem extends Omit<JournalItem, 'nonce' | 'totalFeeWei'> {
  nonce: string;
  totalFeeWei: string;
}

/** Version 1 kept one outstanding item per user; version 2 a list. Both are read; version 2 is written. */
interface StoredFile {
  version: 1 | 2;
  signer: string;
  users: Record<string, { signedNonce: string; outstanding?: StoredItem | StoredItem[]; retired?: string[] }>;
}

const byNonce = (a: JournalItem, b: JournalItem) => (a.nonce < b.nonce ? -1 : a.nonce > b.nonce ? 1 : 0);
const idOf = (item: JournalItem) => `${item.nonce}:${item.signature.toLowerCase()}`;
const sameItem = (a: JournalItem, b: JournalItem) => idOf(a) === idOf(b);
const emptyEntry = (): UserEntry => ({ signedNonce: 0n, outstanding: [], retired: [] });

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

  /** The lowest-nonce outstanding item (see outstandingItems). */
  outstanding(user: string): JournalItem | undefined {
    return this.outstandingItems(user)[0];
  }

  /** The items signed for the user that the chain's nonce has not reached, lowest nonce first. */
  outstandingItems(user: string): JournalItem[] {
    this.reload();
    return [...(this.users.get(user.toLowerCase())?.outstanding ?? [])];
  }

  /**
   * The chain shows the user's nonce at `chainNonce`. Receipts at or below it can never be paid again, so
   * the floor rises to it (new receipts are numbered above it); an outstanding item at or below it has
   * landed or can never land: it is outstanding no more. A node that overstates the nonce can only cost
   * the provider receipts, never charge a user twice.
   */
  observeChainNonce(user: string, chainNonce: bigint): void {
    this.reload();
    const key = user.toLowerCase();
    const entry = this.users.get(key) ?? emptyEntry();
    const open = entry.outstanding.filter((i) => i.nonce > chainNonce);
    const retired = entry.retired.filter((id) => BigInt(id.slice(0, id.indexOf(':'))) > chainNonce);
    const closed = open.length < entry.outstanding.length || retired.length < entry.retired.length;
    if (!closed && chainNonce <= entry.signedNonce) return;
    entry.outstanding = open;
    entry.retired = retired;
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
      if (entry && entry.outstanding.length > 0) throw new Error(`settlement journal: ${item.user} already has an outstanding item`);
      if (entry && item.nonce <= entry.signedNonce) {
        throw new Error(`settlement journal: nonce ${item.nonce} for ${item.user} is not above ${entry.signedNonce}`);
      }
      this.users.set(key, { signedNonce: item.nonce, outstanding: [item], retired: entry?.retired ?? [] });
    }
    this.write();
  }

  /**
   * Takes in what another settler signed with this key (a replica; or this one, before its journal was
   * lost), as verified by the signer from the database's record: `items` become outstanding beside any
   * already there (an item known already, or retired, is not added again), and the floor rises to `floor` and to
   * every item's nonce. Durable before it returns, so a database rolled back later cannot make this
   * journal forget them.
   */
  adopt(user: string, items: readonly JournalItem[], floor: bigint): void {
    this.reload();
    const key = user.toLowerCase();
    const entry = this.users.get(key) ?? emptyEntry();
    let changed = false;
    for (const item of items) {
      if (item.user.toLowerCase() !== key) throw new Error(`settlement journal: an item of ${item.user} adopted for ${user}`);
      if (entry.outstanding.some((o) => sameItem(o, item)) || entry.retired.includes(idOf(item))) continue;
      entry.outstanding = [...entry.outstanding, item].sort(byNonce);
      changed = true;
    }
    const highest = items.reduce((max, i) => (i.nonce > max ? i.nonce : max), floor);
    if (highest > entry.signedNonce) {
      entry.signedNonce = highest;
      changed = true;
    }
    if (!changed) return;
    this.users.set(key, entry);
    this.write();
  }

  /**
   * An outstanding item that must never be sent (it covers a receipt the chain's nonce has passed: an
   * item signed without knowledge of it landed first). It stays counted in the floor; it is no longer
   * offered, nor taken in again from the database, so the user's later receipts can be signed.
   */
  retire(item: JournalItem): void {
    this.reload();
    const entry = this.users.get(item.user.toLowerCase());
    if (!entry || !entry.outstanding.some((o) => sameItem(o, item))) return;
    entry.outstanding = entry.outstanding.filter((o) => !sameItem(o, item));
    entry.retired = [...entry.retired, idOf(item)];
    if (item.nonce > entry.signedNonce) entry.signedNonce = item.nonce;
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
    if (stored.version !== 1 && stored.version !== 2) {
      throw new Error(`settlement journal ${this.file}: version ${String(stored.version)} is not one this pixeld reads`);
    }
    this.loadedMtimeMs = mtimeMs;
    if (stored.signer.toLowerCase() !== this.signer.toLowerCase()) return;
    this.users = new Map(
      Object.entries(stored.users).map(([user, e]) => {
        const items = e.outstanding === undefined ? [] : Array.isArray(e.outstanding) ? e.outstanding : [e.outstanding];
        const outstanding = items.map((i) => ({ ...i, nonce: BigInt(i.nonce), totalFeeWei: BigInt(i.totalFeeWei) })).sort(byNonce);
        return [user, { signedNonce: BigInt(e.signedNonce), outstanding, retired: e.retired ?? [] }];
      }),
    );
  }

  private write(): void {
    const stored: StoredFile = { version: 2, signer: this.signer, users: {} };
    for (const [user, e] of this.users) {
      stored.users[user] = {
        signedNonce: e.signedNonce.toString(),
        outstanding: e.outstanding.map((i) => ({ ...i, nonce: i.nonce.toString(), totalFeeWei: i.totalFeeWei.toString() })),
        ...(e.retired.length > 0 ? { retired: e.retired } : {}),
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
