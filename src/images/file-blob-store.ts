import { createHash, randomBytes } from 'node:crypto';
import { access, mkdir, open, readdir, readFile, rename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { BlobNotFoundError, sha256OfFile, storageError, type BlobStore, type ListedBlob, type StorageRoom, type StoredBlob } from './blob-store.js';

/**
 * Image bytes as files under the data dir, named by their sha256 (`blobs/ab/abcdef…`): the store of a
 * daemon on SQLite, and the local copies a PostgreSQL blob store keeps for its backends.
 */
export class FileBlobStore implements BlobStore {
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

  async room(): Promise<StorageRoom> {
    const fs = await statfs(this.blobDir);
    const freeBytes = fs.bavail * fs.bsize;
    return { ok: freeBytes > this.minFreeBytes, freeBytes, reservedBytes: this.minFreeBytes };
  }

  tempPath(suffix = ''): string {
    return path.join(this.tmpDir, `${Date.now()}-${randomBytes(8).toString('hex')}${suffix}`);
  }

  async putBuffer(bytes: Uint8Array, sha256 = createHash('sha256').update(bytes).digest('hex')): Promise<StoredBlob> {
    const tmp = this.tempPath();
    try {
      await writeFile(tmp, bytes);
      return await this.putFile(tmp, sha256);
    } catch (err) {
      await rm(tmp, { force: true });
      throw storageError(err);
    }
  }

  async putFile(tmpPath: string, knownSha256?: string): Promise<StoredBlob> {
    const sha256 = knownSha256 ?? (await sha256OfFile(tmpPath));
    const { size } = await stat(tmpPath);
    const target = this.pathOf(sha256);
    try {
      await mkdir(path.dirname(target), { recursive: true });
      // rename also refreshes the mtime of an already-present blob: its stored time.
      await rename(tmpPath, target);
    } catch (err) {
      throw storageError(err);
    }
    return { sha256, bytes: size };
  }

  async read(sha256: string): Promise<Buffer> {
    return readFile(this.pathOf(sha256)).catch((err: unknown) => {
      throw notFoundAs(err, sha256);
    });
  }

  async openReadStream(sha256: string): Promise<Readable> {
    // Opened here rather than lazily by the stream, so a missing file is an error before any header is sent.
    const handle = await open(this.pathOf(sha256)).catch((err: unknown) => {
      throw notFoundAs(err, sha256);
    });
    return handle.createReadStream();
  }

  async localPath(sha256: string): Promise<string> {
    const file = this.pathOf(sha256);
    await access(file).catch((err: unknown) => {
      throw notFoundAs(err, sha256);
    });
    return file;
  }

  async *list(): AsyncGenerator<ListedBlob> {
    for (const shard of await readdir(this.blobDir).catch(() => [] as string[])) {
      const dir = path.join(this.blobDir, shard);
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        const info = await stat(path.join(dir, name)).catch(() => undefined);
        if (info) yield { sha256: name, storedMs: info.mtimeMs };
      }
    }
  }

  async removeUnlessStoredAfter(sha256: string, cutoffMs: number): Promise<boolean> {
    const file = this.pathOf(sha256);
    // Two steps: a put between the stat and the rm loses its file. (PostgreSQL's store decides in one statement.)
    const info = await stat(file).catch(() => undefined);
    if (!info || info.mtimeMs > cutoffMs) return false;
    await rm(file, { force: true });
    return true;
  }

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

  private pathOf(sha256: string): string {
    return path.join(this.blobDir, sha256.slice(0, 2), sha256);
  }
}

function notFoundAs(err: unknown, sha256: string): unknown {
  return (err as NodeJS.ErrnoException).code === 'ENOENT' ? new BlobNotFoundError(sha256) : err;
}
