import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { readFile, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeEach, describe, expect, it } from 'vitest';
import { BlobNotFoundError, type BlobStore } from '../../src/images/blob-store.js';

/**
 * The behaviour every BlobStore must have. Each implementation's test file calls this with a factory that
 * returns an empty store on the given data dir. Stored times are compared with the wall clock, which the
 * stores under test must use (the file store has no other: its stored time is a file's mtime).
 */
export interface BlobStoreFactoryOptions {
  dataDir: string;
  minFreeBytes: number;
}

/** A few bytes past two MiB: three chunks in PostgreSQL, the last one short. */
export const MULTI_CHUNK_BYTES = 2 * 1024 * 1024 + 123;

export const sha256Of = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

export async function streamed(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

export async function listed(blobs: BlobStore): Promise<string[]> {
  const shas = new Set<string>();
  for await (const blob of blobs.list()) shas.add(blob.sha256);
  return [...shas].sort();
}

export function describeBlobStoreConformance(name: string, open: (options: BlobStoreFactoryOptions) => Promise<BlobStore>): void {
  describe(`BlobStore conformance: ${name}`, () => {
    let dataDir: string;
    let blobs: BlobStore;
    beforeEach(async () => {
      dataDir = mkdtempSync(path.join(tmpdir(), 'pixeld-blobs-'));
      blobs = await open({ dataDir, minFreeBytes: 0 });
      return () => rmSync(dataDir, { recursive: true, force: true });
    });

    /** An upload as the HTTP layer leaves it: a finished file under the temp dir. */
    async function upload(bytes: Buffer): Promise<string> {
      const file = blobs.tempPath('.png');
      await writeFile(file, bytes);
      return file;
    }

    it('stores bytes under their sha256 and reads them back whole, as a stream and from a local file', async () => {
      const bytes = randomBytes(MULTI_CHUNK_BYTES);
      const stored = await blobs.putBuffer(bytes);
      expect(stored).toEqual({ sha256: sha256Of(bytes), bytes: MULTI_CHUNK_BYTES });
      expect((await blobs.read(stored.sha256)).equals(bytes)).toBe(true);
      expect((await streamed(await blobs.openReadStream(stored.sha256))).equals(bytes)).toBe(true);
      expect((await readFile(await blobs.localPath(stored.sha256))).equals(bytes)).toBe(true);
    });

    it('takes an upload from its temp file, hashing it when no hash is given; the temp file is gone', async () => {
      const bytes = randomBytes(MULTI_CHUNK_BYTES);
      const file = await upload(bytes);
      expect(await blobs.putFile(file)).toEqual({ sha256: sha256Of(bytes), bytes: MULTI_CHUNK_BYTES });
      expect(existsSync(file)).toBe(false);
      expect((await blobs.read(sha256Of(bytes))).equals(bytes)).toBe(true);
      expect((await readFile(await blobs.localPath(sha256Of(bytes)))).equals(bytes)).toBe(true);

      const small = randomBytes(100);
      expect(await blobs.putFile(await upload(small), sha256Of(small))).toEqual({ sha256: sha256Of(small), bytes: 100 });
      expect((await streamed(await blobs.openReadStream(sha256Of(small)))).equals(small)).toBe(true);
    });

    it('stores an empty blob', async () => {
      const { sha256 } = await blobs.putBuffer(Buffer.alloc(0));
      expect((await blobs.read(sha256)).length).toBe(0);
      expect((await streamed(await blobs.openReadStream(sha256))).length).toBe(0);
      expect(await listed(blobs)).toEqual([sha256]);
    });

    it('stores the same bytes once, however often and however they come', async () => {
      const bytes = randomBytes(5000);
      await blobs.putBuffer(bytes);
      await blobs.putBuffer(bytes);
      await blobs.putFile(await upload(bytes));
      expect(await listed(blobs)).toEqual([sha256Of(bytes)]);
      expect((await blobs.read(sha256Of(bytes))).equals(bytes)).toBe(true);
    });

    it('says a blob it does not hold is not found, from every read', async () => {
      const missing = 'f'.repeat(64);
      await expect(blobs.read(missing)).rejects.toBeInstanceOf(BlobNotFoundError);
      await expect(blobs.openReadStream(missing)).rejects.toBeInstanceOf(BlobNotFoundError);
      await expect(blobs.localPath(missing)).rejects.toMatchObject({ name: 'BlobNotFoundError', sha256: missing });
    });

    it('lists every blob with when it was stored', async () => {
      const before = Date.now();
      const a = await blobs.putBuffer(randomBytes(10));
      const b = await blobs.putFile(await upload(randomBytes(20)));
      const entries: Array<{ sha256: string; storedMs: number }> = [];
      for await (const blob of blobs.list()) entries.push(blob);
      expect([...new Set(entries.map((e) => e.sha256))].sort()).toEqual([a.sha256, b.sha256].sort());
      for (const entry of entries) expect(entry.storedMs).toBeGreaterThanOrEqual(before - 1000);
      for (const entry of entries) expect(entry.storedMs).toBeLessThanOrEqual(Date.now() + 1000);
    });

    it('removes a blob stored before the cut-off: gone from every read and from the list', async () => {
      const a = await blobs.putFile(await upload(randomBytes(MULTI_CHUNK_BYTES)));
      const b = await blobs.putBuffer(randomBytes(30));
      await blobs.localPath(a.sha256);
      expect(await blobs.removeUnlessStoredAfter(a.sha256, Date.now() + 1000)).toBe(true);
      await expect(blobs.read(a.sha256)).rejects.toBeInstanceOf(BlobNotFoundError);
      await expect(blobs.openReadStream(a.sha256)).rejects.toBeInstanceOf(BlobNotFoundError);
      await expect(blobs.localPath(a.sha256)).rejects.toBeInstanceOf(BlobNotFoundError);
      expect(await listed(blobs)).toEqual([b.sha256]);
      expect(await blobs.removeUnlessStoredAfter(a.sha256, Date.now() + 1000)).toBe(false);
    });

    it('keeps a blob stored again after the cut-off: a put racing the sweeper wins', async () => {
      const bytes = randomBytes(MULTI_CHUNK_BYTES);
      await blobs.putBuffer(bytes);
      await sleep(20);
      const cutoff = Date.now();
      await sleep(20);
      await blobs.putFile(await upload(bytes));
      expect(await blobs.removeUnlessStoredAfter(sha256Of(bytes), cutoff)).toBe(false);
      expect((await blobs.read(sha256Of(bytes))).equals(bytes)).toBe(true);
      expect((await readFile(await blobs.localPath(sha256Of(bytes)))).equals(bytes)).toBe(true);
    });

    it('removes upload temp files older than the cut-off, and only those', async () => {
      const old = await upload(randomBytes(10));
      const fresh = await upload(randomBytes(10));
      const hourAgo = new Date(Date.now() - 3_600_000);
      await utimes(old, hourAgo, hourAgo);
      expect(path.dirname(old)).toBe(blobs.tmpDir);
      expect(await blobs.removeStaleTemp(Date.now() - 60_000)).toBe(1);
      expect(existsSync(old)).toBe(false);
      expect(existsSync(fresh)).toBe(true);
    });

    it('reports free local space against the reserve', async () => {
      const room = await blobs.room();
      expect(room).toMatchObject({ ok: true, reservedBytes: 0 });
      expect(room.freeBytes).toBeGreaterThan(0);
      const full = await open({ dataDir, minFreeBytes: Number.MAX_SAFE_INTEGER });
      expect(await full.room()).toMatchObject({ ok: false, reservedBytes: Number.MAX_SAFE_INTEGER });
    });
  });
}
