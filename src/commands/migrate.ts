import { mkdirSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ConfigError } from '../config/load.js';
import { openStores, sqliteFile, storeKind } from '../jobs/open-stores.js';
import { redactDatabaseUrl } from '../jobs/postgres/pool.js';
import {
  commandOutput,
  EXIT_FAILED,
  EXIT_OK,
  EXIT_USAGE,
  loadCommandConfig,
  OUTPUT_FLAGS,
  processIo,
  type CommandIo,
  type OutputOptions,
} from './command-io.js';

/**
 * `pixeld migrate`: brings the configured database to this pixeld's schema and says what it applied. The
 * daemon does the same at start; this is for a rollout (migrate once, then start the replicas) and for
 * scripts (`--json`). On PostgreSQL it runs under the same advisory lock as a starting daemon, so it is safe
 * while replicas start.
 */

export const MIGRATE_USAGE = `Usage: pixeld migrate [--json] [--quiet] [--config <file>]

Applies the missing schema migrations to the configured database: the SQLite file in dataDir, or the
PostgreSQL database of database.url (env PIXELD_DATABASE_URL). The daemon applies them at start too; run this
before starting replicas of a new version. Each migration is applied once, under an advisory lock, even when
replicas start at the same time. A database written by a newer pixeld is refused and left as it is.

  --json              Print one JSON object: {"store","database","from","to","applied":[{"version","name"}]}
  -q, --quiet         No progress lines on stderr
  -c, --config <file> Config file (default: $PIXELD_CONFIG, else config/pixeld.yaml)

Exit status: 0 migrated or already current, 1 the database refused or a migration failed, 2 bad arguments or configuration.
`;

export interface MigrateOptions extends OutputOptions {
  configPath?: string | undefined;
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
  const out = commandOutput(io, options);
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
    if (storeKind(config) === 'sqlite') {
      out.progress(`opening SQLite ${sqliteFile(config)} (created if missing)`);
      mkdirSync(config.dataDir, { recursive: true });
    } else {
      // Replicas starting at the same time hold the same lock while they migrate: this waits for them.
      out.progress(`connecting to PostgreSQL ${redactDatabaseUrl(config.database.url!)}; waiting for the migration lock`);
    }
    const stores = await openStores(config);
    out.progress(stores.migrations.applied.length === 0 ? 'nothing to apply' : `applied ${stores.migrations.applied.length} migration(s)`);
    await stores.close();
    report = { store: stores.kind, database: stores.location, ...stores.migrations };
  } catch (err) {
    io.stderr(`pixeld migrate: ${describe(err)}`);
    return EXIT_FAILED;
  }
  out.result(report);
  const where = `${report.store === 'postgres' ? 'PostgreSQL' : 'SQLite'} ${report.database}`;
  if (report.applied.length === 0) {
    out.line(`${where}: schema ${report.to}, up to date; nothing applied`);
    return EXIT_OK;
  }
  out.line(`${where}: schema ${report.from} → ${report.to}`);
  for (const m of report.applied) out.line(`  applied ${m.version}: ${m.name}`);
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
      options: { config: { type: 'string', short: 'c' }, ...OUTPUT_FLAGS, help: { type: 'boolean', short: 'h' } },
    }));
  } catch (err) {
    io.stderr(`pixeld migrate: ${(err as Error).message}\n\n${MIGRATE_USAGE}`);
    return EXIT_USAGE;
  }
  if (values.help) {
    io.stdout(MIGRATE_USAGE);
    return EXIT_OK;
  }
  return migrate({ configPath: values.config, json: values.json, quiet: values.quiet }, io);
}
