import { mkdirSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ConfigError } from '../config/load.js';
import { openStores, storeKind } from '../jobs/open-stores.js';
import { EXIT_FAILED, EXIT_OK, EXIT_USAGE, loadCommandConfig, processIo, type CommandIo } from './command-io.js';

/**
 * `pixeld migrate`: brings the configured database to this pixeld's schema and says what it applied. The
 * daemon does the same at start; this is for a rollout (migrate once, then start the replicas) and for
 * scripts (`--json`). On PostgreSQL it runs under the same advisory lock as a starting daemon, so it is safe
 * while replicas start.
 */

export const MIGRATE_USAGE = `Usage: pixeld migrate [--json] [--config <file>]

Applies the missing schema migrations to the configured database: the SQLite file in dataDir, or the
PostgreSQL database of database.url (env PIXELD_DATABASE_URL). The daemon applies them at start too; run this
before starting replicas of a new version. Each migration is applied once, under an advisory lock, even when
replicas start at the same time. A database written by a newer pixeld is refused and left as it is.

  --json              Print one JSON object: {"store","database","from","to","applied":[{"version","name"}]}
  -c, --config <file> Config file (default: $PIXELD_CONFIG, else config/pixeld.yaml)

Exit status: 0 migrated or already current, 1 the database refused or a migration failed, 2 bad arguments or configuration.
`;

export interface MigrateOptions {
  configPath?: string | undefined;
  json?: boolean | undefined;
}

/** What `--json` prints. */
export interface MigrateReport {
  store: 'sqlite' | 'postgres';
  /** The SQLite file, or the PostgreSQL URL without its password. */
  database: string;
  from: number;
  to: number;
  applied: Array<{ version: number; name: string }>;
}

export async function migrate(options: MigrateOptions, io: Pick<CommandIo, 'stdout' | 'stderr' | 'env'>): Promise<number> {
  let config;
  try {
    config = loadCommandConfig(options.configPath, io.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      io.stderr(`pixeld migrate: ${err.message}`);
      return EXIT_USAGE;
    }
    throw err;
  }
  let report: MigrateReport;
  try {
    if (storeKind(config) === 'sqlite') mkdirSync(config.dataDir, { recursive: true });
    const stores = await openStores(config);
    await stores.close();
    report = { store: stores.kind, database: stores.location, ...stores.migrations };
  } catch (err) {
    io.stderr(`pixeld migrate: ${describe(err)}`);
    return EXIT_FAILED;
  }
  if (options.json) {
    io.stdout(JSON.stringify(report));
    return EXIT_OK;
  }
  const where = `${report.store === 'postgres' ? 'PostgreSQL' : 'SQLite'} ${report.database}`;
  if (report.applied.length === 0) {
    io.stdout(`${where}: schema ${report.to}, up to date; nothing applied`);
    return EXIT_OK;
  }
  io.stdout(`${where}: schema ${report.from} → ${report.to}`);
  for (const m of report.applied) io.stdout(`  applied ${m.version}: ${m.name}`);
  return EXIT_OK;
}

/** A connection error may be an AggregateError (one per address tried) with an empty message. */
function describe(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) return describe(err.errors[0]);
  const e = err as { message?: string; code?: string };
  return e.message || e.code || String(err);
}

/** `pixeld migrate …` from the command line. */
export async function runMigrateCli(argv: string[], io: Pick<CommandIo, 'stdout' | 'stderr' | 'env'> = processIo()): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      options: { config: { type: 'string', short: 'c' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    }));
  } catch (err) {
    io.stderr(`pixeld migrate: ${(err as Error).message}\n\n${MIGRATE_USAGE}`);
    return EXIT_USAGE;
  }
  if (values.help) {
    io.stdout(MIGRATE_USAGE);
    return EXIT_OK;
  }
  return migrate({ configPath: values.config, json: values.json }, io);
}
