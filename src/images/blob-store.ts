import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { unlink } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { PixeldError } from '../errors.js';

/**
 * Where image bytes live — job inputs and result images, named by their sha256 and stored once however
 * many jobs use them. Two implementations: files under `dataDir` beside the SQLite database
 * (file-blob-store.ts), and PostgreSQL's `blobs` tables, which every replica on the database reads
 * (postgres-blob-store.ts). The job store's `blob_refs` says which job still needs which blob; the sweeper
 * removes the rest.
 *
 * Uploads on their way in are temp files on this machine's disk whichever store holds the bytes, so
 * `room()` is about that disk.
 */
export interface BlobStore {
  /** The local directory uploads are written to before they are checked and stored. */
  readonly tmpDir: string;
  /** A fresh path under `tmpDir`. */
  tempPath(suffix?: string): string;
  /** Free space on the local disk against the reserve kept for accepted jobs. */
  room(): Promise<StorageRoom>;

  /**
   * Stores bytes. Bytes already stored are kept as they are, but their stored time is refreshed: the
   * sweeper's grace period then protects them until the job row that references them exists.
   * `sha256`: the bytes' hash when the caller already has it (the runner hashes outputs to find copies).
   */
  putBuffer(bytes: Uint8Array, sha256?: string): Promise<StoredBlob>;
  /**
   * Takes a finished temp file into the store (the file is gone afterwards), as `putBuffer` does bytes,
   * without holding the file in memory: uploads may be tens of MB.
   */
  putFile(tmpPath: string, knownSha256?: string): Promise<StoredBlob>;

  /** The whole blob. Rejects with BlobNotFoundError when it is not stored. */
  read(sha256: string): Promise<Buffer>;
  /** The blob as a byte stream, for bodies too large to hold. Rejects with BlobNotFoundError before any byte when it is not stored. */
  openReadStream(sha256: string): Promise<Readable>;
  /** A file on this machine holding the blob, for backends that read their inputs from disk. Rejects with BlobNotFoundError. */
  localPath(sha256: string): Promise<string>;

  /** Every stored blob with when it was last stored, for the sweeper. */
  list(): AsyncIterable<ListedBlob>;
  /**
   * Deletes the blob unless it was stored again after `cutoffMs` (a put racing the sweeper wins).
   * @returns whether anything was deleted
   */
  removeUnlessStoredAfter(sha256: string, cutoffMs: number): Promise<boolean>;
  /** Deletes temp files older than the cut-off (uploads of requests that died half-way); returns how many. */
  removeStaleTemp(olderThanMs: number): Promise<number>;
}

export interface StoredBlob {
  sha256: string;
  bytes: number;
}

export interface ListedBlob {
  sha256: string;
  /** When the blob was last stored (written, or written again). */
  storedMs: number;
}

export interface StorageRoom {
  /** Whether new work may be accepted: more than `reservedBytes` free. */
  ok: boolean;
  freeBytes: number;
  reservedBytes: number;
}

/** The blob is not stored: never written, or swept once no job needed it. */
export class BlobNotFoundError extends Error {
  override readonly name = 'BlobNotFoundError';
  constructor(readonly sha256: string) {
    super(`no stored blob ${sha256}`);
  }
}

export async function sha256OfFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** A full disk as the caller should see it (507, retry later); any other error as it is. */
export function storageError(err: unknown): unknown {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  // SQLITE_FULL: a database write failed for lack of space (better-sqlite3's SqliteError carries the code);
  // 53100: PostgreSQL's disk_full (pg's errors carry the SQLSTATE as their code).
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL' || code === '53100') {
    return new PixeldError('insufficient_storage', 'the provider is out of storage space; try again later', {
      cause: err,
      retryAfterSeconds: 30,
    });
  }
  return err;
}

export async function removeQuietly(file: string): Promise<void> {
  await unlink(file).catch(() => undefined);
}
