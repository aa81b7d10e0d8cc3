import type { Pool } from 'pg';
import { ADVISORY_LOCK } from './pool.js';

/**
 * The PostgreSQL schema, as versioned migrations. Version n is the n-th entry; `schema_migrations` records
 * each one applied (version, name, when). Append only: an applied migration is never edited, a change is a
 * new entry.
 *
 * The tables are SQLite's (jobs/sqlite/database.ts, schema 6) with PostgreSQL's types: amounts and
 * sequence numbers are NUMERIC(78,0) (a uint256 has at most 78 digits; numeric order is native, no
 * zero-padding), times are BIGINT milliseconds, JSON documents are TEXT exactly as written (the signed
 * texts must come back byte for byte, and JSONB refuses the \u0000 a prompt may hold). SQLite's `user`
 * column is `owner` here (USER is a reserved word). What a statement needs from a document has a column of
 * its own: `images_requested` (params.n) for reservations, `images_delivered` for run times.
 */
export interface PostgresMigration {
  version: number;
  name: string;
  sql: string;
}

export const POSTGRES_MIGRATIONS: readonly PostgresMigration[] = [
  {
    version: 1,
    name: 'jobs, blob references, receipts, sequence numbers, settlement batches and blocks, locks',
    sql: `
      CREATE TABLE jobs (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('generation', 'edit')),
        delivery TEXT NOT NULL CHECK (delivery IN ('sync', 'async')),
        model TEXT NOT NULL,
        backend_id TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
        params TEXT NOT NULL,
        images_requested INTEGER NOT NULL CHECK (images_requested >= 1),
        inputs TEXT NOT NULL,
        request_sha256 TEXT NOT NULL,
        price_per_image_wei NUMERIC(78, 0) NOT NULL CHECK (price_per_image_wei >= 0),
        fingerprint TEXT NOT NULL,
        idempotency_key TEXT,
        base_url TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        run_after_ms BIGINT NOT NULL,
        started_ms BIGINT,
        finished_ms BIGINT,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_token TEXT,
        lease_expires_ms BIGINT,
        error TEXT,
        result TEXT,
        images_delivered INTEGER,
        signature TEXT,
        expires_ms BIGINT,
        results_deleted_ms BIGINT
      );
      -- claimNext: the oldest pending job of a backend (FOR UPDATE SKIP LOCKED walks this index).
      CREATE INDEX jobs_pending ON jobs (backend_id, seq) WHERE status = 'pending';
      CREATE INDEX jobs_processing ON jobs (lease_expires_ms) WHERE status = 'processing';
      CREATE INDEX jobs_model_status ON jobs (model, status);
      -- Admission: the reservations of an owner's unfinished jobs.
      CREATE INDEX jobs_owner_unfinished ON jobs (owner) WHERE status IN ('pending', 'processing');
      CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
      CREATE INDEX jobs_expiry ON jobs (expires_ms) WHERE results_deleted_ms IS NULL AND expires_ms IS NOT NULL;
      CREATE INDEX jobs_finished ON jobs (finished_ms) WHERE finished_ms IS NOT NULL;
      CREATE INDEX jobs_recent_completed ON jobs (backend_id, finished_ms) WHERE status = 'completed';

      CREATE TABLE blob_refs (
        job_id TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('input', 'output')),
        PRIMARY KEY (job_id, sha256, role)
      );
      CREATE INDEX blob_refs_sha ON blob_refs (sha256);

      CREATE TABLE receipts (
        job_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        provider TEXT NOT NULL,
        fee_wei NUMERIC(78, 0) NOT NULL CHECK (fee_wei >= 0),
        images INTEGER NOT NULL,
        created BIGINT NOT NULL,
        seq NUMERIC(78, 0),
        leaf TEXT NOT NULL,
        receipt TEXT NOT NULL,
        signature TEXT,
        state TEXT NOT NULL CHECK (state IN ('unsettled', 'offchain', 'in_flight', 'settled', 'partial', 'invalid', 'void')),
        note TEXT,
        batch_id TEXT,
        root TEXT,
        proof TEXT,
        settled_tx TEXT,
        settled_block BIGINT,
        settled_ms BIGINT
      );
      CREATE INDEX receipts_owner_state ON receipts (owner, state, seq);
      CREATE INDEX receipts_batch ON receipts (batch_id) WHERE batch_id IS NOT NULL;
      -- No two receipts of one owner share a sequence number, whichever replica wrote them.
      CREATE UNIQUE INDEX receipts_owner_seq ON receipts (owner, seq) WHERE seq IS NOT NULL;

      -- The owner's last receipt sequence number; completions lock the row, so numbers follow commit order.
      CREATE TABLE receipt_sequences (
        owner TEXT PRIMARY KEY,
        last_seq NUMERIC(78, 0) NOT NULL CHECK (last_seq >= 0)
      );

      CREATE TABLE settlement_batches (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN ('prepared', 'sent', 'confirmed', 'abandoned')),
        items TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        tx_hashes TEXT NOT NULL DEFAULT '[]',
        wallet_nonce BIGINT,
        sent_ms BIGINT,
        block BIGINT,
        results TEXT,
        note TEXT
      );
      CREATE INDEX settlement_batches_open ON settlement_batches (created_ms) WHERE state IN ('prepared', 'sent');

      CREATE TABLE settlement_blocks (
        owner TEXT PRIMARY KEY,
        shortfall_wei NUMERIC(78, 0) NOT NULL,
        balance_wei NUMERIC(78, 0) NOT NULL,
        since_ms BIGINT NOT NULL
      );

      CREATE TABLE locks (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms BIGINT NOT NULL);
    `,
  },
  {
    version: 2,
    name: 'replicas: who accepted and who ran each job, live replicas, shared image bytes, shared rate limits',
    sql: `
      -- The replica that accepted the job (a sync caller waits on its connection) and the one running or
      -- last running it: start-up recovery touches only its own jobs, and an operator can tell who ran what.
      ALTER TABLE jobs ADD COLUMN submitted_by TEXT, ADD COLUMN ran_by TEXT;
      CREATE INDEX jobs_processing_by ON jobs (ran_by) WHERE status = 'processing';
      CREATE INDEX jobs_sync_unfinished ON jobs (submitted_by) WHERE delivery = 'sync' AND status IN ('pending', 'processing');

      -- Each replica's last sign of life: the sync jobs of a replica that stopped answering are cancelled.
      CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        started_ms BIGINT NOT NULL,
        seen_ms BIGINT NOT NULL,
        version TEXT NOT NULL,
        signer TEXT NOT NULL,
        backends TEXT NOT NULL
      );

      -- Image bytes every replica can read, in chunks of at most 1 MiB (a read streams them in order).
      CREATE TABLE blobs (
        sha256 TEXT PRIMARY KEY,
        bytes BIGINT NOT NULL CHECK (bytes >= 0),
        chunk_count INTEGER NOT NULL CHECK (chunk_count >= 0),
        stored_ms BIGINT NOT NULL
      );
      CREATE TABLE blob_chunks (
        sha256 TEXT NOT NULL REFERENCES blobs (sha256) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (sha256, idx)
      );
      -- PNG, JPEG and WebP are compressed already: TOAST's compression would only spend CPU.
      ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

      -- Named locks are session advisory locks now (billing store): a row with an expiry needed agreeing clocks.
      DROP TABLE locks;

      -- Per-owner allowances (token buckets) shared by every replica.
      CREATE TABLE rate_limit_buckets (
        owner TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('requests', 'images')),
        tokens DOUBLE PRECISION NOT NULL,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (owner, kind)
      );
    `,
  },
  {
    version: 3,
    name: 'settlement items by owner and nonce',
    sql: `
      -- Every settlement item ever prepared, by owner (lower-case address) and nonce: the TEE's signer must
      -- know what any replica signed with the shared key, not only what its own journal saw.
      CREATE TABLE settlement_items (
        owner TEXT NOT NULL,
        nonce NUMERIC(78, 0) NOT NULL,
        batch_id TEXT NOT NULL,
        PRIMARY KEY (owner, nonce, batch_id)
      );
      INSERT INTO settlement_items (owner, nonce, batch_id)
      SELECT lower(i->>'user'), (i->>'nonce')::numeric, b.id
      FROM settlement_batches b, jsonb_array_elements(b.items::jsonb) i
      ON CONFLICT DO NOTHING;
    `,
  },
  {
    version: 4,
    name: 'job history: events per job, indexes for listing jobs and their activity',
    sql: `
      -- Listing newest first, for everyone or one owner (paging walks these from a (created_ms, id) cursor).
      CREATE INDEX jobs_created ON jobs (created_ms, id);
      CREATE INDEX jobs_owner_created ON jobs (owner, created_ms, id);
      -- Activity per time slice reads the index of finished jobs alone.
      DROP INDEX jobs_finished;
      CREATE INDEX jobs_finished ON jobs (finished_ms) INCLUDE (status, started_ms, created_ms, images_delivered)
        WHERE finished_ms IS NOT NULL;
      -- Each job's events, numbered per job from the counter on its row: the transition's own UPDATE bumps
      -- it and its RETURNING feeds the insert, so two replicas never write one number. "type" has no CHECK:
      -- a new kind of event needs no migration.
      ALTER TABLE jobs ADD COLUMN last_event_seq INTEGER NOT NULL DEFAULT 0;
      CREATE TABLE job_events (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at_ms BIGINT NOT NULL,
        type TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        replica TEXT,
        detail TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
      );
    `,
  },
  {
    version: 5,
    name: 'webhooks: the URL on jobs, the outbox of deliveries and its trigger',
    sql: `
      ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
      ALTER TABLE jobs ADD COLUMN webhook_format TEXT CHECK (webhook_format IN ('0g', 'therouter'));
      -- One delivery per job end; its id is the webhook-id every attempt sends.
      CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        event TEXT NOT NULL,
        owner TEXT NOT NULL,
        url TEXT NOT NULL,
        format TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        created_ms BIGINT NOT NULL,
        next_attempt_ms BIGINT,
        lease_token TEXT,
        lease_expires_ms BIGINT,
        last_attempt_ms BIGINT,
        last_status INTEGER,
        last_error TEXT,
        finished_ms BIGINT,
        UNIQUE (job_id, event)
      );
      CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_ms) WHERE state = 'pending';
      -- The delivery is written in the transaction of whichever statement ends the job (complete, fail,
      -- cancel, a recovery), so no terminal transition can commit without it.
      CREATE FUNCTION jobs_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        INSERT INTO webhook_deliveries (id, job_id, event, owner, url, format, state, created_ms, next_attempt_ms)
        VALUES ('msg_' || replace(gen_random_uuid()::text, '-', ''), NEW.id, 'job.' || NEW.status, NEW.owner, NEW.webhook_url,
          NEW.webhook_format, 'pending', NEW.finished_ms, NEW.finished_ms)
        ON CONFLICT (job_id, event) DO NOTHING;
        RETURN NULL;
      END
      $fn$;
      CREATE TRIGGER jobs_webhook_outbox AFTER UPDATE OF status ON jobs FOR EACH ROW
        WHEN (NEW.webhook_url IS NOT NULL AND OLD.status IN ('pending', 'processing') AND NEW.status IN ('completed', 'failed', 'cancelled'))
        EXECUTE FUNCTION jobs_webhook_outbox();
    `,
  },
];

export interface AppliedMigration {
  version: number;
  name: string;
}

export interface PostgresMigrationResult {
  /** The schema version found before (0: an empty database). */
  from: number;
  to: number;
  /** What this call applied, in order; empty when another process had applied everything. */
  applied: AppliedMigration[];
}

/**
 * Brings the database to the newest schema. Runs under a session advisory lock, so replicas starting
 * together apply each migration once: the others wait, then find nothing left to do. Each migration is
 * one transaction with its `schema_migrations` row; a failed one leaves the schema at the version before.
 * A database written by a newer pixeld is refused, never touched.
 */
export async function migratePostgres(
  pool: Pool,
  migrations: readonly PostgresMigration[] = POSTGRES_MIGRATIONS,
): Promise<PostgresMigrationResult> {
  const client = await pool.connect();
  let broken = false;
  try {
    await client.query('SELECT pg_advisory_lock($1, 0)', [ADVISORY_LOCK.migrations]);
    try {
      await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
      )`);
      const { rows } = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM schema_migrations');
      const from = rows[0]?.v ?? 0;
      const known = migrations.length === 0 ? 0 : migrations[migrations.length - 1]!.version;
      if (from > known) {
        throw new Error(`the database was written by a newer pixeld (schema ${from}, this one knows ${known})`);
      }
      const applied: AppliedMigration[] = [];
      for (const m of migrations) {
        if (m.version <= from) continue;
        try {
          await client.query('BEGIN');
          await client.query(m.sql);
          await client.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK').catch(() => undefined);
          throw new Error(`migration ${m.version} (${m.name}) failed: ${(err as Error).message}`, { cause: err });
        }
        applied.push({ version: m.version, name: m.name });
      }
      return { from, to: Math.max(from, known), applied };
    } finally {
      await client.query('SELECT pg_advisory_unlock($1, 0)', [ADVISORY_LOCK.migrations]).catch(() => {
        broken = true; // the session is gone, and its lock with it
      });
    }
  } finally {
    client.release(broken);
  }
}
