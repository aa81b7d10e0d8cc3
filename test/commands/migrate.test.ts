import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runMigrateCli, type MigrateReport } from '../../src/commands/migrate.js';
import { POSTGRES_MIGRATIONS } from '../../src/jobs/postgres/migrations.js';
import { MIGRATION_NAMES, MIGRATIONS } from '../../src/jobs/sqlite/database.js';
import { tempDir } from '../helpers/daemon.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';

/** `pixeld migrate` on both stores: what it applies, what it prints, and what it refuses. */

const REPO = fileURLToPath(new URL('../..', import.meta.url));

function capture(env: NodeJS.ProcessEnv) {
  const out: string[] = [];
  const err: string[] = [];
  // An empty config file: nothing from the working directory's config/pixeld.yaml or the caller's env.
  return { io: { stdout: (l: string) => out.push(l), stderr: (l: string) => err.push(l), env: { PIXELD_CONFIG: '', ...env } }, out, err };
}

let pg: TestDatabase;
beforeAll(async () => {
  pg = await createTestDatabase();
});
afterAll(async () => {
  await pg?.drop();
});

describe('pixeld migrate', () => {
  it('creates and upgrades the SQLite file in dataDir, then has nothing to do', async () => {
    const dataDir = path.join(tempDir(), 'fresh');
    const first = capture({ PIXELD_DATA_DIR: dataDir });
    expect(await runMigrateCli(['--json'], first.io), first.err.join('\n')).toBe(0);
    const report = JSON.parse(first.out.join('')) as MigrateReport;
    expect(report).toMatchObject({ store: 'sqlite', database: path.join(dataDir, 'pixeld.sqlite'), from: 0, to: MIGRATIONS.length });
    expect(report.applied.map((m) => m.version)).toEqual(MIGRATIONS.map((_, i) => i + 1));
    expect(report.applied.map((m) => m.name)).toEqual([...MIGRATION_NAMES]);
    expect(MIGRATION_NAMES).toHaveLength(MIGRATIONS.length);
    expect(existsSync(path.join(dataDir, 'pixeld.sqlite'))).toBe(true);

    const again = capture({ PIXELD_DATA_DIR: dataDir });
    expect(await runMigrateCli([], again.io)).toBe(0);
    expect(again.out).toEqual([`SQLite ${path.join(dataDir, 'pixeld.sqlite')}: schema ${MIGRATIONS.length}, up to date; nothing applied`]);
    expect(again.err).toEqual([`… opening SQLite ${path.join(dataDir, 'pixeld.sqlite')} (created if missing)`, '… nothing to apply']);
    expect(first.err).toEqual([`… opening SQLite ${path.join(dataDir, 'pixeld.sqlite')} (created if missing)`, `… applied ${MIGRATIONS.length} migration(s)`]);

    const quiet = capture({ PIXELD_DATA_DIR: dataDir });
    expect(await runMigrateCli(['--json', '--quiet'], quiet.io)).toBe(0);
    expect(quiet.err).toEqual([]);
    expect(JSON.parse(quiet.out.join(''))).toMatchObject({ from: MIGRATIONS.length, to: MIGRATIONS.length, applied: [] });
  });

  it('applies the PostgreSQL migrations of PIXELD_DATABASE_URL, printing the URL without its password', async () => {
    const url = new URL(pg.url);
    url.password = 'hunter2'; // trust auth: never checked, never printed
    const first = capture({ PIXELD_DATABASE_URL: url.toString() });
    expect(await runMigrateCli([], first.io), first.err.join('\n')).toBe(0);
    expect(first.out[0]).toMatch(new RegExp(`^PostgreSQL postgres://postgres:\\*\\*\\*@127\\.0\\.0\\.1:5432/${pg.name}: schema 0 → ${POSTGRES_MIGRATIONS.length}$`));
    expect(first.out.slice(1)).toEqual(POSTGRES_MIGRATIONS.map((m) => `  applied ${m.version}: ${m.name}`));
    expect(first.err[0]).toMatch(/^… connecting to PostgreSQL postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:5432\/\S+; waiting for the migration lock$/);
    expect(first.err[1]).toBe(`… applied ${POSTGRES_MIGRATIONS.length} migration(s)`);
    expect([...first.out, ...first.err].join('\n')).not.toContain('hunter2');

    const again = capture({ PIXELD_DATABASE_URL: pg.url });
    expect(await runMigrateCli(['--json'], again.io)).toBe(0);
    expect(JSON.parse(again.out.join(''))).toEqual({
      store: 'postgres',
      database: pg.url,
      from: POSTGRES_MIGRATIONS.length,
      to: POSTGRES_MIGRATIONS.length,
      applied: [],
    });
  });

  it('says why when the database cannot be reached (exit 1) or the URL is not PostgreSQL’s (exit 2)', async () => {
    const down = capture({ PIXELD_DATABASE_URL: 'postgres://postgres@127.0.0.1:1/nowhere' });
    expect(await runMigrateCli([], down.io)).toBe(1);
    expect(down.err.at(-1)).toMatch(/^pixeld migrate: .*(ECONNREFUSED|connect)/);
    const wrong = capture({ PIXELD_DATABASE_URL: 'mysql://db/pixeld' });
    expect(await runMigrateCli([], wrong.io)).toBe(2);
    expect(wrong.err).toEqual(['pixeld migrate: config: database.url: must be a postgres:// URL, e.g. postgres://pixeld@db.internal:5432/pixeld']);
  });

  it('runs from the command line as `pixeld migrate`', async () => {
    const dataDir = path.join(tempDir(), 'cli');
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PIXELD_')) env[k] = v;
    env.PIXELD_DATA_DIR = dataDir;
    const { code, stdout } = await new Promise<{ code: number | null; stdout: string }>((resolve, reject) => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'migrate', '--json'], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      child.on('error', reject);
      child.on('exit', (c) => resolve({ code: c, stdout: out }));
    });
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toMatchObject({ store: 'sqlite', from: 0, to: MIGRATIONS.length });
  }, 30_000);
});
