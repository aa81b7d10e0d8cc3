import Database from 'better-sqlite3';

/**
 * The daemon's one SQLite file (WAL mode), shared by the job store and the billing store so that a job's
 * completion and its receipt are written in one transaction.
 */

/** Schema version n is the first n of these applied, in order (PRAGMA user_version = n). */
export const MIGRATIONS: readonly string[] = [
  `CREATE TABLE jobs (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     id TEXT NOT NULL UNIQUE,
     owner TEXT NOT NULL,
     kind TEXT NOT NULL,
     delivery TEXT NOT NULL CHECK (delivery IN ('sync', 'async')),
     model TEXT NOT NULL,
     backend_id TEXT NOT NULL,
     status TEXT NOT NULL,
     params TEXT NOT NULL,
     inputs TEXT NOT NULL,
     request_sha256 TEXT NOT NULL,
     fingerprint TEXT NOT NULL,
     idempotency_key TEXT,
     base_url TEXT NOT NULL,
     created_ms INTEGER NOT NULL,
     updated_ms INTEGER NOT NULL,
     run_after_ms INTEGER NOT NULL,
     started_ms INTEGER,
     finished_ms INTEGER,
     attempts INTEGER NOT NULL DEFAULT 0,
     lease_token TEXT,
     lease_expires_ms INTEGER,
     error TEXT,
     result TEXT,
     expires_ms INTEGER,
     results_deleted_ms INTEGER
   );
   CREATE INDEX jobs_queue ON jobs (backend_id, status, seq);
   CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
   CREATE INDEX jobs_expiry ON jobs (expires_ms) WHERE results_deleted_ms IS NULL AND expires_ms IS NOT NULL;
   CREATE INDEX jobs_finished ON jobs (finished_ms) WHERE finished_ms IS NOT NULL;
   CREATE TABLE blob_refs (
     job_id TEXT NOT NULL,
     sha256 TEXT NOT NULL,
     role TEXT NOT NULL CHECK (role IN ('input', 'output')),
     PRIMARY KEY (job_id, sha256, role)
   );
   CREATE INDEX blob_refs_sha ON blob_refs (sha256);`,
  `ALTER TABLE jobs ADD COLUMN price_per_image_wei TEXT NOT NULL DEFAULT '0';
   ALTER TABLE jobs ADD COLUMN signature TEXT;`,
  `CREATE INDEX jobs_model_status ON jobs (model, status);`,
  // Billing: one receipt per completed job with a fee, written with the completion (billing.md).
  `CREATE TABLE receipts (
     job_id TEXT PRIMARY KEY,
     user TEXT NOT NULL,
     provider TEXT NOT NULL,
     fee_wei TEXT NOT NULL,
     images INTEGER NOT NULL,
     created INTEGER NOT NULL,
     leaf TEXT NOT NULL,
     receipt TEXT NOT NULL,
     state TEXT NOT NULL CHECK (state IN ('unsettled', 'offchain', 'in_flight', 'settled', 'partial')),
     batch_id TEXT,
     root TEXT,
     proof TEXT,
     settled_tx TEXT,
     settled_block INTEGER,
     settled_ms INTEGER
   );
   CREATE INDEX receipts_user_state ON receipts (user, state);
   CREATE INDEX receipts_batch ON receipts (batch_id) WHERE batch_id IS NOT NULL;
   CREATE TABLE settlement_nonces (user TEXT PRIMARY KEY, last_nonce TEXT NOT NULL);
   CREATE TABLE settlement_batches (
     id TEXT PRIMARY KEY,
     state TEXT NOT NULL CHECK (state IN ('prepared', 'sent', 'confirmed', 'abandoned')),
     items TEXT NOT NULL,
     created_ms INTEGER NOT NULL,
     tx_hashes TEXT NOT NULL DEFAULT '[]',
     wallet_nonce INTEGER,
     sent_ms INTEGER,
     block INTEGER,
     results TEXT,
     note TEXT
   );
   CREATE TABLE settlement_blocks (
     user TEXT PRIMARY KEY,
     shortfall_wei TEXT NOT NULL,
     balance_wei TEXT NOT NULL,
     since_ms INTEGER NOT NULL
   );
   CREATE TABLE locks (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms INTEGER NOT NULL);`,
  // Receipts v2: a per-user sequence number (zero-padded to 78 digits so that text order is numeric order:
  // a uint256 has at most 78), the 0G signature kept with the receipt, and the states of receipts that can
  // never be charged (`invalid`: fails verification; `void`: at or below the settled nonce, or unsequenced).
  `CREATE TABLE receipts_v2 (
     job_id TEXT PRIMARY KEY,
     user TEXT NOT NULL,
     provider TEXT NOT NULL,
     fee_wei TEXT NOT NULL,
     images INTEGER NOT NULL,
     created INTEGER NOT NULL,
     seq TEXT,
     leaf TEXT NOT NULL,
     receipt TEXT NOT NULL,
     signature TEXT,
     state TEXT NOT NULL CHECK (state IN ('unsettled', 'offchain', 'in_flight', 'settled', 'partial', 'invalid', 'void')),
     note TEXT,
     batch_id TEXT,
     root TEXT,
     proof TEXT,
     settled_tx TEXT,
     settled_block INTEGER,
     settled_ms INTEGER
   );
   INSERT INTO receipts_v2 (job_id, user, provider, fee_wei, images, created, leaf, receipt, state, batch_id, root, proof,
     settled_tx, settled_block, settled_ms)
   SELECT job_id, user, provider, fee_wei, images, created, leaf, receipt, state, batch_id, root, proof, settled_tx,
     settled_block, settled_ms FROM receipts;
   DROP TABLE receipts;
   ALTER TABLE receipts_v2 RENAME TO receipts;
   CREATE INDEX receipts_user_state ON receipts (user, state, seq);
   CREATE INDEX receipts_batch ON receipts (batch_id) WHERE batch_id IS NOT NULL;
   CREATE TABLE receipt_sequences (user TEXT PRIMARY KEY, last_seq TEXT NOT NULL);`,
  // A settlement's nonce is now the highest receipt sequence number it covers, and what the TEE signed is
  // in its own journal (tee/settlement-journal.ts): the database's record of used nonces has no reader.
  `DROP TABLE settlement_nonces;`,
  // Who accepted and who ran each job: one replica per SQLite file, but the record reads the same as on
  // PostgreSQL, where replicas share the jobs.
  `ALTER TABLE jobs ADD COLUMN submitted_by TEXT;
   ALTER TABLE jobs ADD COLUMN ran_by TEXT;`,
  // Every settlement item ever prepared, by user and nonce (lower-case address; nonce zero-padded like seq):
  // the TEE's signer must know what any settler signed with its key, not only what its own journal saw.
  `CREATE TABLE settlement_items (
     user TEXT NOT NULL,
     nonce TEXT NOT NULL,
     batch_id TEXT NOT NULL,
     PRIMARY KEY (user, nonce, batch_id)
   );
   INSERT OR IGNORE INTO settlement_items (user, nonce, batch_id)
   SELECT lower(json_extract(i.value, '$.user')), substr('000000000000000000000000000000000000000000000000000000000000000000000000000000' || json_extract(i.value, '$.nonce'), -78), b.id
   FROM settlement_batches b, json_each(b.items) i;`,
  // Job history: listing newest first (per owner too); activity per time slice read from the index of
  // finished jobs alone (it covers what jobActivity reads, images delivered included, as on PostgreSQL);
  // and each job's events, numbered per job from the counter on its row (an event is written in the same
  // transaction as the transition it records). `type` has no CHECK: a new kind of event needs no migration.
  `ALTER TABLE jobs ADD COLUMN images_delivered INTEGER;
   UPDATE jobs SET images_delivered = json_array_length(result, '$.images') WHERE status = 'completed' AND result IS NOT NULL;
   DROP INDEX jobs_finished;
   CREATE INDEX jobs_finished ON jobs (finished_ms, status, started_ms, created_ms, images_delivered) WHERE finished_ms IS NOT NULL;
   ALTER TABLE jobs ADD COLUMN last_event_seq INTEGER NOT NULL DEFAULT 0;
   CREATE INDEX jobs_created ON jobs (created_ms, id);
   CREATE INDEX jobs_owner_created ON jobs (owner, created_ms, id);
   CREATE TABLE job_events (
     job_id TEXT NOT NULL,
     seq INTEGER NOT NULL,
     at_ms INTEGER NOT NULL,
     type TEXT NOT NULL,
     attempt INTEGER NOT NULL,
     replica TEXT,
     detail TEXT NOT NULL,
     PRIMARY KEY (job_id, seq)
   ) WITHOUT ROWID;`,
  // Webhooks: the URL (and poll shape) a job's end is announced to, and the outbox of deliveries. The trigger
  // writes a job's delivery in the transaction of whichever verb ends it (complete, fail, cancel, a recovery),
  // so no terminal transition can commit without it; the id is the webhook-id every attempt sends.
  `ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
   ALTER TABLE jobs ADD COLUMN webhook_format TEXT CHECK (webhook_format IN ('0g', 'therouter'));
   CREATE TABLE webhook_deliveries (
     id TEXT PRIMARY KEY,
     job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
     event TEXT NOT NULL,
     owner TEXT NOT NULL,
     url TEXT NOT NULL,
     format TEXT NOT NULL,
     state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
     attempts INTEGER NOT NULL DEFAULT 0,
     created_ms INTEGER NOT NULL,
     next_attempt_ms INTEGER,
     lease_token TEXT,
     lease_expires_ms INTEGER,
     last_attempt_ms INTEGER,
     last_status INTEGER,
     last_error TEXT,
     finished_ms INTEGER,
     UNIQUE (job_id, event)
   );
   CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_ms) WHERE state = 'pending';
   CREATE TRIGGER jobs_webhook_outbox AFTER UPDATE OF status ON jobs
   WHEN NEW.webhook_url IS NOT NULL AND OLD.status IN ('pending', 'processing') AND NEW.status IN ('completed', 'failed', 'cancelled')
   BEGIN
     INSERT OR IGNORE INTO webhook_deliveries (id, job_id, event, owner, url, format, state, created_ms, next_attempt_ms)
     VALUES ('msg_' || lower(hex(randomblob(16))), NEW.id, 'job.' || NEW.status, NEW.owner, NEW.webhook_url, NEW.webhook_format,
       'pending', NEW.finished_ms, NEW.finished_ms);
   END;`,
  // Earnings per UTC day and per user, summed by SQLite (sqlite-billing-store.ts): each read from an index
  // holding every column it reads (created too, for the day) in group order, so it neither reads the
  // receipts' JSON nor sorts. The day expression is the store's to the character, or SQLite will not use it.
  `CREATE INDEX receipts_earnings_by_day ON receipts (strftime('%Y-%m-%d', created, 'unixepoch'), state, fee_wei, images, created);
   CREATE INDEX receipts_earnings_by_user ON receipts (user, state, fee_wei, images);`,
];

/** What each of MIGRATIONS does, for `pixeld migrate` (one name per migration, same order). */
export const MIGRATION_NAMES: readonly string[] = [
  'jobs and blob references',
  'job prices and signatures',
  'index of jobs by model and status',
  'receipts, settlement nonces, batches, blocks and locks',
  'receipts v2: sequence numbers, signatures, invalid and void states',
  'drop settlement_nonces',
  'jobs record the replica that accepted and the one that ran them',
  'settlement items by user and nonce',
  'job history: events per job, images delivered, indexes for listing jobs and their activity',
  'webhooks: the URL on jobs, the outbox of deliveries and its trigger',
  'indexes for earnings per day and per user',
];

/** A sequence number as stored: zero-padded so that SQL text order is numeric order. */
export const seqKey = (seq: bigint): string => seq.toString().padStart(78, '0');

export interface OpenSqliteOptions {
  /** Told the schema version found and the one left after migrating (equal when there was nothing to do). */
  onMigrated?: (from: number, to: number) => void;
}

export function openSqliteDatabase(file: string, options: OpenSqliteOptions = {}): Database.Database {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  // FULL: a commit is on disk before it returns, so a receipt, a reservation or a prepared batch survives
  // a power loss or a killed VM, not only a process crash (NORMAL in WAL mode may lose the last commits).
  // Its cost is in the benchmark's "completion commit" row.
  db.pragma('synchronous = FULL');
  db.pragma('busy_timeout = 5000');
  db.pragma('foreign_keys = ON');
  const from = migrate(db);
  options.onMigrated?.(from, MIGRATIONS.length);
  return db;
}

/** Applies the missing migrations; returns the version found. */
function migrate(db: Database.Database): number {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > MIGRATIONS.length) {
    throw new Error(`the database was written by a newer pixeld (schema ${version}, this one knows ${MIGRATIONS.length})`);
  }
  for (let v = version; v < MIGRATIONS.length; v += 1) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  return version;
}
