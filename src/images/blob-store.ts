import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat, statfs, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { PixeldError } from '../errors.js';

/**
 * Image bytes live here as files named by their sha256 (`blobs/ab/abcdef…`), never in the database.
 * The same bytes are stored once; the job store's `blob_refs` says who still needs a file, and the
 * sweeper removes files nobody references.
 */
export interface StoredBlob {
  sha256: string;
  bytes: number;
}

/**
 * Space kept free for jobs already accepted: below it new work is refused (507), so the jobs that were
 * let in can still write their images and their completion. 5 % of a filesystem smaller than 1.25 GiB.
 * @default 64 MiB
 */

export interface StorageRoom {
  /** Whether new work may be accepted: more than `reservedBytes` free. */
  ok: boolean;
  freeBytes: number;
  reservedBytes: number;
}

export class BlobStore {
  readonly blobDir: string;
  readonly tmpDir: string;

  /**
   * @param minFreeBytes free space under the data dir below which no new work is accepted: what is left
   * is kept for the jobs already accepted (`limits.minFreeDiskBytes`).
   */
  constructor(
    dataDir: string,
    private readonly minFreeBytes: number,
  ) {
    this.blobDir = path.join(dataDir, 'blobs');
    this.tmpDir = path.join(dataDir, 'tmp');
  }

  async init(): Promise<void> {
    await mkdir(this.blobDir, { recursive: true });
    await mkdir(this.tmpDir, { recursive: true });
  }

  pathOf(sha256: string): string {
    return path.join(this.blobDir, sha256.slice(0, 2), sha256);
  }

  /** Free space under the data dir against the reserve kept for accepted jobs. */
  async room(): Promise<StorageRoom> {
    const fs = await statfs(this.blobDir);
    const freeBytes = fs.bavail * fs.bsize;
    return { ok: freeBytes > this.minFreeBytes, freeBytes, reservedBytes: this.minFreeBytes };
  }

  /** A fresh path under the temp dir, for uploads on their way in. */
  tempPath(suffix = ''): string {
    return path.join(this.tmpDir, `${Date.now()}-${randomBytes(8).toString('hex')}${suffix}`);
  }

  /** `sha256`: the bytes' hash when the caller already has it (the runner hashes outputs to find copies). */
  async putBuffer(bytes: Uint8Array, sha256 = createHash('sha256').update(bytes).digest('hex')): Promise<StoredBlob> {
    const tmp = this.tempPath();
    try {
      await writeFile(tmp, bytes);
      await this.moveIntoPlace(tmp, sha256);
    } catch (err) {
      await rm(tmp, { force: true });
      throw storageError(err);
    }
    return { sha256, bytes: bytes.byteLength };
  }

  /** Moves a finished temp file into the store, hashing it as a stream (it may be tens of MB). */
  async putFile(tmpPath: string, knownSha256?: string): Promise<StoredBlob> {
    const sha256 = knownSha256 ?? (await sha256OfFile(tmpPath));
    const { size } = await stat(tmpPath);
    try {
      await this.moveIntoPlace(tmpPath, sha256);
    } catch (err) {
      throw storageError(err);
    }
    return { sha256, bytes: size };
  }

  async remove(sha256: string): Promise<void> {
    await rm(this.pathOf(sha256), { force: true });
  }

  /** Every stored blob with its modification time, for the sweeper. */
  async *list(): AsyncGenerator<{ sha256: string; mtimeMs: number }> {
    for (const shard of await readdir(this.blobDir).catch(() => [] as string[])) {
      const dir = path.join(this.blobDir, shard);
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        const info = await stat(path.join(dir, name)).catch(() => undefined);
        if (info) yield { sha256: name, mtimeMs: info.mtimeMs };
      }
    }
  }

  /** Temp files older than the cut-off: uploads of requests that died half-way. */
  async removeStaleTemp(olderThanMs: number): Promise<number> {
    let removed = 0;
    for (const name of await readdir(this.tmpDir).catch(() => [] as string[])) {
      const file = path.join(this.tmpDir, name);
      const info = await stat(file).catch(() => undefined);
      if (info && info.mtimeMs < olderThanMs) {
        await rm(file, { force: true, recursive: true });
        removed += 1;
      }
    }
    return removed;
  }

  private async moveIntoPlace(tmpPath: string, sha256: string): Promise<void> {
    const target = this.pathOf(sha256);
    await mkdir(path.dirname(target), { recursive: true });
    // rename also refreshes the mtime of an already-present blob, which keeps the sweeper's grace
    // period from deleting it between this write and the job row that references it.
    await rename(tmpPath, target);
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
  // SQLITE_FULL: a database write failed for lack of space (better-sqlite3's SqliteError carries the code).
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL') {
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
