import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Wallet } from 'ethers';
import { DEV_KEY_FILE } from '../../src/tee/dev-key.js';
import { runChildToExit, startChild, type ChildDaemon, type ExitInfo } from '../reliability/harness/child-daemon.js';

/**
 * Replicas of one provider as an operator runs them: `pixeld serve` child processes (through tsx, see
 * test/reliability/harness/child-daemon.ts) that share nothing but a PostgreSQL database — each has its own
 * data dir, its own ephemeral port and its own replica name (PIXELD_REPLICA_ID).
 *
 * In tee.mode `dev` the signing key is a file in the data dir, made at first start: replicas started on
 * empty data dirs would each make their own key and sign receipts of one provider with different keys.
 * Every replica here gets the same key file before it starts, as an operator must copy it (dstack derives
 * one key for every instance of an app); a replica started with another key is refused while a replica
 * with the provider's key is live.
 */

export interface ReplicaSet {
  /** The TEE signing key every replica signs with (hex private key). */
  teeKey: string;
  teeAddress: string;
  /** Everything started through this set, by name, in start order (killed ones too). */
  replicas: Map<string, ChildDaemon>;
  /** The data dir of the replica of that name (made on its first start). */
  dataDirOf(name: string): string;
  /**
   * Starts replica `name` (also its PIXELD_REPLICA_ID) on the shared database and waits until /healthz
   * answers. `config` is the config file's content; database.url comes from the set.
   */
  start(name: string, config: Record<string, unknown>, options?: StartOptions): Promise<ChildDaemon>;
  /** Starts replica `name` and waits for it to exit on its own (a refusal at start-up). */
  runToExit(name: string, config: Record<string, unknown>, options?: StartOptions): Promise<{ exit: ExitInfo; output: string }>;
  /** SIGKILLs every replica still running and removes the data dirs. */
  close(): Promise<void>;
}

export interface StartOptions {
  env?: Record<string, string>;
  /** This replica's own key instead of the set's: a misconfigured replica. */
  teeKey?: string;
}

export interface ReplicaSetOptions {
  databaseUrl: string;
  /** Hex private key of the TEE signing key; a fresh one by default. */
  teeKey?: string;
  /** Environment every replica gets (admin token, provider wallet key, …). */
  env?: Record<string, string>;
}

export function replicaSet(options: ReplicaSetOptions): ReplicaSet {
  const root = mkdtempSync(path.join(tmpdir(), 'pixeld-replicas-'));
  const teeKey = options.teeKey ?? Wallet.createRandom().privateKey;
  const replicas = new Map<string, ChildDaemon>();
  // A worker torn down without afterAll (a hook timeout) must not leave replicas running on the machine.
  const killOnExit = () => {
    for (const r of replicas.values()) if (r.running) process.kill(r.pid, 'SIGKILL');
  };
  process.once('exit', killOnExit);
  const dataDirOf = (name: string) => path.join(root, name.replace(/[^A-Za-z0-9._-]/g, '_'));
  /** The replica's data dir with the key file in place, its config with the shared database, its env. */
  const childOptions = (name: string, config: Record<string, unknown>, startOptions: StartOptions) => {
    const dataDir = dataDirOf(name);
    mkdirSync(dataDir, { recursive: true });
    writeFileSync(path.join(dataDir, DEV_KEY_FILE), `${startOptions.teeKey ?? teeKey}\n`, { mode: 0o600 });
    return {
      name,
      dataDir,
      config: { ...config, database: { ...((config.database as object | undefined) ?? {}), url: options.databaseUrl } },
      env: { PIXELD_REPLICA_ID: name, ...(options.env ?? {}), ...(startOptions.env ?? {}) },
    };
  };
  return {
    teeKey,
    teeAddress: new Wallet(teeKey).address,
    replicas,
    dataDirOf,
    async start(name, config, startOptions = {}) {
      const child = await startChild(childOptions(name, config, startOptions));
      replicas.set(name, child);
      return child;
    },
    runToExit(name, config, startOptions = {}) {
      return runChildToExit(childOptions(name, config, startOptions));
    },
    async close() {
      process.off('exit', killOnExit);
      await Promise.all([...replicas.values()].map((r) => r.kill('SIGKILL')));
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/**
 * `job completed` log lines of every replica, by job id, once each of `ids` has one (a replica logs the line
 * after the completion commits, so a poll can see the job completed a moment before its log line arrives),
 * or after `timeoutMs`.
 */
export async function completionLogs(replicas: Iterable<ChildDaemon>, ids: string[], timeoutMs = 5_000): Promise<Map<string, string[]>> {
  const list = [...replicas];
  for (const deadline = Date.now() + timeoutMs; ; await new Promise((r) => setTimeout(r, 50))) {
    const byJob = completionsByJob(list);
    if (ids.every((id) => byJob.has(id)) || Date.now() > deadline) return byJob;
  }
}

/** `job completed` log lines of every replica so far, by job id: which replicas said they completed it. */
export function completionsByJob(replicas: Iterable<ChildDaemon>): Map<string, string[]> {
  const byJob = new Map<string, string[]>();
  for (const replica of replicas) {
    for (const line of replica.logLines()) {
      if (line.message !== 'job completed' || typeof line.jobId !== 'string') continue;
      byJob.set(line.jobId, [...(byJob.get(line.jobId) ?? []), replica.name]);
    }
  }
  return byJob;
}
