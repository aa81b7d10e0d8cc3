import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Pool } from 'pg';
import { inTransaction } from '../jobs/postgres/pool.js';
import { BlobNotFoundError, removeQuietly, sha256OfFile, storageError, type BlobStore, type ListedBlob, type StorageRoom, type StoredBlob } from './blob-store.js';
import { FileBlobStore } from './file-blob-store.js';

/**
 * Image bytes in PostgreSQL, so every replica on the database reads what any of them stored: a `blobs` row
 * per blob and its bytes in `blob_chunks` rows of BLOB_CHUNK_BYTES. Uploads are stored and /v1/files links
 * served a chunk at a time, so neither holds a 50 MB image whole in memory (a base64 answer needs it whole).
 *
 * Backends read their inputs from files, so this store keeps local copies under the data dir (a
 * FileBlobStore): an upload stays there after it is stored, and a replica running a job accepted by
 * another copies the inputs out of the database first. The sweeper deletes a copy with its row.
 */

/** Bytes per `blob_chunks` row. @default 1 MiB */
export const BLOB_CHUNK_BYTES = 1024 * 1024;
/** `blobs` rows per query when listing them for the sweeper. */
const LIST_PAGE = 500;

export interface PostgresBlobStoreOptions {
  pool: Pool;
  /** Where uploads wait and local copies are kept. */
  dataDir: string;
  /** Free local space below which no new work is accepted (`limits.minFreeDiskBytes`). */
  minFreeBytes: number;
  /** The clock stored times are written with; the sweeper compares them with its own. */
  now: () => number;
}

export class PostgresBlobStore implements BlobStore {
  private readonly pool: Pool;
  private readonly now: () => number;
  private readonly localCopies: FileBlobStore;

  constructor(options: PostgresBlobStoreOptions) {
    this.pool = options.pool;
    this.now = options.now;
    this.localCopies = new FileBlobStore(options.dataDir, options.minFreeBytes);
  }

  get tmpDir(): string {
    return this.localCopies.tmpDir;
  }

  async init(): Promise<void> {
    await this.localCopies.init();
  }

  tempPath(suffix?: string): string {
    return this.localCopies.tempPath(suffix);
  }

  room(): Promise<StorageRoom> {
    return this.localCopies.room();
  }

  removeStaleTemp(olderThanMs: number): Promise<number> {
    return this.localCopies.removeStaleTemp(olderThanMs);
  }

  async putBuffer(bytes: Uint8Array, sha256 = createHash('sha256').update(bytes).digest('hex')): Promise<StoredBlob> {
    const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    await this.write(sha256, buffer.length, () => bufferChunks(buffer));
    return { sha256, bytes: buffer.length };
  }

  async putFile(tmpPath: string, knownSha256?: string): Promise<StoredBlob> {
    const sha256 = knownSha256 ?? (await sha256OfFile(tmpPath));
    const { size } = await stat(tmpPath);
    await this.write(sha256, size, () => fileChunks(tmpPath, size));
    // Kept as the local copy: the backend reads it from there if this replica runs the job.
    return this.localCopies.putFile(tmpPath, sha256);
  }

  async read(sha256: string): Promise<Buffer> {
    // One statement, so one snapshot: the row and all its chunks, or nothing.
    const { rows } = await this.pool.query<{ data: Buffer | null }>(
      `SELECT c.data FROM blobs b LEFT JOIN blob_chunks c ON c.sha256 = b.sha256
       WHERE b.sha256 = $1 ORDER BY c.idx`,
      [sha256],
    );
    if (rows.length === 0) throw new BlobNotFoundError(sha256);
    return Buffer.concat(rows.flatMap((row) => (row.data === null ? [] : [row.data])));
  }

  async openReadStream(sha256: string): Promise<Readable> {
    const { rows } = await this.pool.query<{ chunk_count: number }>('SELECT chunk_count FROM blobs WHERE sha256 = $1', [sha256]);
    if (rows.length === 0) throw new BlobNotFoundError(sha256);
    const chunkCount = rows[0]!.chunk_count;
    const pool = this.pool;
    async function* chunks(): AsyncGenerator<Buffer> {
      for (let idx = 0; idx < chunkCount; idx += 1) {
        const chunk = await pool.query<{ data: Buffer }>('SELECT data FROM blob_chunks WHERE sha256 = $1 AND idx = $2', [sha256, idx]);
        // Swept while it was being read: the response is cut off, as a deleted file's would be.
        if (chunk.rows.length === 0) throw new BlobNotFoundError(sha256);
        yield chunk.rows[0]!.data;
      }
    }
    // A byte stream, as a file's is. It fetches the next chunk only once the one before was taken: a slow
    // client holds about two chunks in memory, never the blob.
    return Readable.from(chunks(), { objectMode: false });
  }

  async localPath(sha256: string): Promise<string> {
    try {
      return await this.localCopies.localPath(sha256);
    } catch (err) {
      if (!(err instanceof BlobNotFoundError)) throw err;
    }
    const tmp = this.localCopies.tempPath();
    try {
      await pipeline(await this.openReadStream(sha256), createWriteStream(tmp));
      await this.localCopies.putFile(tmp, sha256);
    } catch (err) {
      await removeQuietly(tmp);
      throw storageError(err);
    }
    return this.localCopies.localPath(sha256);
  }

  /** The database's blobs, then the local copies (a copy whose row another replica deleted is swept here). */
  async *list(): AsyncGenerator<ListedBlob> {
    let after = '';
    for (;;) {
      const { rows } = await this.pool.query<{ sha256: string; stored_ms: string }>(
        'SELECT sha256, stored_ms FROM blobs WHERE sha256 > $1 ORDER BY sha256 LIMIT $2',
        [after, LIST_PAGE],
      );
      for (const row of rows) yield { sha256: row.sha256, storedMs: Number(row.stored_ms) };
      if (rows.length < LIST_PAGE) break;
      after = rows.at(-1)!.sha256;
    }
    yield* this.localCopies.list();
  }

  async removeUnlessStoredAfter(sha256: string, cutoffMs: number): Promise<boolean> {
    // One statement against a concurrent put: the row goes only if its stored time is still old.
    // `stored` comes from the statement's snapshot, taken before the delete: whether the row was there.
    const { rows } = await this.pool.query<{ deleted: boolean; stored: boolean }>(
      `WITH deleted AS (DELETE FROM blobs WHERE sha256 = $1 AND stored_ms <= $2 RETURNING 1)
       SELECT EXISTS (SELECT 1 FROM deleted) AS deleted, EXISTS (SELECT 1 FROM blobs WHERE sha256 = $1) AS stored`,
      [sha256, Math.floor(cutoffMs)],
    );
    const { deleted, stored } = rows[0]!;
    if (stored && !deleted) return false;
    // The local copy goes with its row, here or already on another replica.
    const copyDeleted = await this.localCopies.removeUnlessStoredAfter(sha256, cutoffMs);
    return deleted || copyDeleted;
  }

  /**
   * One transaction: other replicas see the row only once all its chunks are there. A second writer of
   * the same new blob waits at the insert until the first commits, then finds the row there and only
   * refreshes its stored time — or, if the first rolled back, writes the blob itself.
   */
  private async write(sha256: string, bytes: number, chunks: () => Iterable<Buffer> | AsyncIterable<Buffer>): Promise<void> {
    const chunkCount = Math.ceil(bytes / BLOB_CHUNK_BYTES);
    try {
      await inTransaction(this.pool, async (client) => {
        for (;;) {
          const inserted = await client.query(
            `INSERT INTO blobs (sha256, bytes, chunk_count, stored_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sha256) DO NOTHING RETURNING 1`,
            [sha256, bytes, chunkCount, this.now()],
          );
          if (inserted.rowCount === 1) break;
          // Already stored: keep the chunks. GREATEST: a replica whose clock lags must not shorten the grace period.
          const refreshed = await client.query('UPDATE blobs SET stored_ms = GREATEST(stored_ms, $2) WHERE sha256 = $1', [sha256, this.now()]);
          if (refreshed.rowCount === 1) return;
          // Swept between the two statements: insert it after all.
        }
        let idx = 0;
        for await (const data of chunks()) {
          await client.query('INSERT INTO blob_chunks (sha256, idx, data) VALUES ($1, $2, $3)', [sha256, idx, data]);
          idx += 1;
        }
      });
    } catch (err) {
      throw storageError(err);
    }
  }
}

function* bufferChunks(buffer: Buffer): Generator<Buffer> {
  for (let start = 0; start < buffer.length; start += BLOB_CHUNK_BYTES) yield buffer.subarray(start, start + BLOB_CHUNK_BYTES);
}

async function* fileChunks(file: string, size: number): AsyncGenerator<Buffer> {
  const handle = await open(file);
  try {
    for (let position = 0; position < size; position += BLOB_CHUNK_BYTES) {
      const chunk = Buffer.allocUnsafe(Math.min(BLOB_CHUNK_BYTES, size - position));
      let filled = 0;
      while (filled < chunk.length) {
        const { bytesRead } = await handle.read(chunk, filled, chunk.length - filled, position + filled);
        if (bytesRead === 0) throw new Error(`${file} ended before its ${size} bytes`);
        filled += bytesRead;
      }
      yield chunk;
    }
  } finally {
    await handle.close();
  }
}
