import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { newJobId } from '../../src/jobs/model.js';
import { openSqliteDatabase } from '../../src/jobs/sqlite/database.js';
import { sqliteJobStore } from '../../src/jobs/sqlite/sqlite-store.js';
import { tempDir } from '../helpers/daemon.js';
import { describeJobStoreConformance } from './store-conformance.js';

describeJobStoreConformance('sqlite', async () => sqliteJobStore(openSqliteDatabase(path.join(tempDir(), 'jobs.sqlite'))));

describe('sqlite job store', () => {
  it('keeps jobs across close and reopen of the same file', async () => {
    const file = path.join(tempDir(), 'jobs.sqlite');
    const first = sqliteJobStore(openSqliteDatabase(file));
    const id = newJobId();
    await first.create(
      {
        id,
        owner: 'o',
        kind: 'generation',
        delivery: 'async',
        model: 'm',
        backendId: 'b',
        params: { prompt: 'persist', n: 1, size: '64x64', quality: 'high', responseFormat: 'b64_json', outputFormat: 'png', outputCompression: undefined, background: 'auto', seed: 3, negativePrompt: undefined, numInferenceSteps: undefined, guidanceScale: undefined, user: undefined },
        inputs: [],
        requestSha256: '0'.repeat(64),
        pricePerImageWei: 5n,
        fingerprint: '1'.repeat(64),
        idempotencyKey: undefined,
        baseUrl: 'http://x',
        createdMs: 5,
      },
      0,
    );
    await first.close();
    const second = sqliteJobStore(openSqliteDatabase(file));
    expect((await second.get(id))!.params.prompt).toBe('persist');
    await second.close();
  });
});
