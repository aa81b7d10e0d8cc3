import { mkdtempSync, rmSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Wallet } from 'ethers';
import { openSqliteDatabase } from '../../src/jobs/sqlite/database.js';
import { sqliteJobStore } from '../../src/jobs/sqlite/sqlite-store.js';
import { completedJob } from '../completed-job.js';
import { percentile, type BenchRow, type BenchScenario } from '../table.js';

const JOBS = 300;
const USER = '0x00000000000000000000000000000000000000A1';

/**
 * The cost of `synchronous = FULL` (issue 12): the completion transaction — job row, receipt, sequence
 * number and the two signatures made inside it — timed with FULL (what the daemon uses: every commit is
 * on disk before it returns) and with NORMAL (WAL's default: survives a process crash, not a power loss).
 * The files live beside the repository, not in /tmp, which is often tmpfs where fsync costs nothing.
 */
export const completionCommitScenario: BenchScenario = {
  name: 'completion-commit',
  async run(): Promise<BenchRow[]> {
    const root = fileURLToPath(new URL('../results/', import.meta.url));
    const key = Wallet.createRandom();
    const tee = { signer: key, address: key.address, teeLabel: 'INSECURE-DEV' as const };
    const p50: Record<string, number> = {};
    const rows: BenchRow[] = [];
    for (const mode of ['FULL', 'NORMAL'] as const) {
      const dir = mkdtempSync(path.join(root, 'commit-'));
      try {
        const db = openSqliteDatabase(path.join(dir, 'pixeld.sqlite'));
        db.pragma(`synchronous = ${mode}`);
        const store = sqliteJobStore(db);
        const samples: number[] = [];
        for (let i = 0; i < JOBS; i += 1) {
          await completedJob({
            store,
            tee,
            provider: key.address,
            user: USER,
            pricePerImageWei: 10n ** 15n,
            index: i,
            onComplete: async (complete) => {
              const started = performance.now();
              const done = await complete();
              samples.push(performance.now() - started);
              return done;
            },
          });
        }
        await store.close();
        samples.sort((a, b) => a - b);
        p50[mode] = percentile(samples, 50);
        const scenario = `completion commit (job + receipt + 2 signatures), synchronous=${mode}`;
        rows.push(
          { scenario, figure: 'p50', value: p50[mode]!, unit: 'ms', target: 'info', pass: null },
          { scenario, figure: 'p99', value: percentile(samples, 99), unit: 'ms', target: 'info', pass: null },
        );
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
    rows.push({
      scenario: 'completion commit',
      figure: 'FULL − NORMAL, p50 (the cost of durability)',
      value: p50.FULL! - p50.NORMAL!,
      unit: 'ms',
      target: 'info',
      pass: null,
    });
    return rows;
  },
};
