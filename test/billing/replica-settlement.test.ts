import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Wallet } from 'ethers';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { DEV_KEY_FILE } from '../../src/tee/dev-key.js';
import type { ChildDaemon } from '../reliability/harness/child-daemon.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';
import { replicaSet, type ReplicaSet } from '../helpers/replicas.js';
import { startRpcProxy, type RpcProxy } from '../helpers/rpc-proxy.js';
import { accountOf, bearer, fundedUsers, NEVER, PRICE, settlementEventsFor, setupBillingChain, type BillingChain } from './fixture.js';

/**
 * One settler at a time across replicas (issue 14): two `pixeld serve` replicas on one PostgreSQL database
 * and one anvil, with the provider's TEE key and wallet, take paid jobs from 0G users; then two settlers race
 * — two `pixeld settle` processes, and the two replicas' own rounds — while the RPC proxy holds the first
 * settlement transaction until the other settler has answered. Exactly one settles; the other says the lock
 * is held; the chain shows one settlement per user.
 */

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const ADMIN_TOKEN = 'adm-replica-settlement-0123456789';

let c: BillingChain;
let db: TestDatabase;
let sql: pg.Client;
let proxy: RpcProxy;
let set: ReplicaSet;
let sa: ChildDaemon;
let sb: ChildDaemon;

function config(): Record<string, unknown> {
  return {
    log: { level: 'info' },
    auth: { mode: '0g', chainCacheMs: 0 },
    chain: { rpcUrl: proxy.url, chainId: c.anvil.chainId, servingAddress: c.serving.target as string, rpcTimeoutMs: 5_000 },
    provider: { address: c.provider.address },
    admin: { tokenEnv: 'PIXELD_TEST_ADMIN_TOKEN' },
    // Rounds run only when asked: by `pixeld settle` or POST /v1/admin/settle.
    billing: { settlementCron: NEVER, thresholdCheckIntervalMs: 3_600_000 },
    backends: [{ id: 'reference', type: 'reference', concurrency: 4, latencyMsPerImage: 0 }],
    models: [{ id: 'ref', backend: 'reference', capabilities: ['generation'], sizes: ['64x64'], pricePerImageWei: PRICE.toString(), maxN: 4 }],
  };
}

beforeAll(async () => {
  [c, db] = await Promise.all([setupBillingChain(), createTestDatabase()]);
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
  proxy = await startRpcProxy(c.anvil.rpcUrl);
  set = replicaSet({
    databaseUrl: db.url,
    teeKey: c.teeKey.privateKey,
    env: { PIXELD_PROVIDER_KEY: c.provider.privateKey, PIXELD_TEST_ADMIN_TOKEN: ADMIN_TOKEN, NODE_ENV: 'test' },
  });
  [sa, sb] = await Promise.all([set.start('sa', config()), set.start('sb', config())]);
}, 90_000);

afterAll(async () => {
  await set?.close();
  await proxy?.close();
  await sql?.end();
  await db?.drop();
  await c?.anvil.stop();
});

function showLogsOnFailure(extra: () => string = () => ''): void {
  onTestFailed(() => {
    for (const replica of set.replicas.values()) console.error(replica.tail(60));
    console.error(extra());
  });
}

/** A paid synchronous generation of one image, as `user`, through replica `r`; returns the job id. */
async function paidJob(r: ChildDaemon, user: Wallet): Promise<string> {
  const res = await fetch(`${r.url}/v1/images/generations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: await bearer(c, user) },
    body: JSON.stringify({ model: 'ref', prompt: `for ${user.address}`, size: '64x64', n: 1 }),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`generation on ${r.name} answered ${res.status}: ${text.slice(0, 300)}`);
  return res.headers.get('x-job-id')!;
}

/** Two paid jobs per user, one through each replica. */
async function jobsOnBothReplicas(users: Wallet[]): Promise<string[]> {
  const ids: string[] = [];
  for (const user of users) for (const r of [sa, sb]) ids.push(await paidJob(r, user));
  return ids;
}

/** Holds the next settlement transaction at the proxy until `release` settles (or 20 s pass), then sends it on. */
function holdNextTransaction(release: Promise<unknown>): void {
  proxy.once('eth_sendRawTransaction', async (call) => {
    await Promise.race([release, new Promise((r) => setTimeout(r, 20_000))]);
    await call.forward();
    return 'answer' as const;
  });
}

const sentTransactions = () => proxy.methods.filter((m) => m === 'eth_sendRawTransaction').length;

async function receiptStates(ids: string[]): Promise<Array<{ state: string; tx: string | null }>> {
  const { rows } = await sql.query<{ state: string; tx: string | null }>('SELECT state, settled_tx AS tx FROM receipts WHERE job_id = ANY($1)', [ids]);
  return rows;
}

interface SettleRun {
  name: string;
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `pixeld settle` in its own process, as an operator runs it on a replica's machine: its own data dir and TEE key file. */
function settleProcess(name: string): { exited: Promise<SettleRun> } {
  const dataDir = set.dataDirOf(`settle-${name}`);
  mkdirSync(dataDir, { recursive: true });
  writeFileSync(path.join(dataDir, DEV_KEY_FILE), `${set.teeKey}\n`, { mode: 0o600 });
  const file = path.join(dataDir, 'settle.json');
  writeFileSync(file, JSON.stringify({ ...config(), dataDir, database: { url: db.url } }));
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO, 'src', 'cli.ts'), 'settle', '--config', file], {
    cwd: REPO,
    env: { ...process.env, PIXELD_PROVIDER_KEY: c.provider.privateKey, PIXELD_CONFIG: '', PIXELD_DATABASE_URL: '', NODE_ENV: 'test' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 45_000);
  return {
    exited: new Promise((resolve) =>
      child.once('exit', (code) => {
        clearTimeout(timer);
        resolve({ name, code, stdout, stderr });
      }),
    ),
  };
}

describe('settlement across replicas on one PostgreSQL database', () => {
  it('two `pixeld settle` processes at once: one settles every user once, the other is told the lock is held', async () => {
    const runs: SettleRun[] = [];
    showLogsOnFailure(() => runs.map((r) => `--- settle ${r.name} exit ${r.code}\n${r.stdout}\n${r.stderr}`).join('\n'));
    const users = await fundedUsers(c, 3);
    const ids = await jobsOnBothReplicas(users);
    const sentBefore = sentTransactions();

    const one = settleProcess('one');
    const two = settleProcess('two');
    // The winner's transaction waits until the loser has exited: the two rounds overlap for certain.
    holdNextTransaction(Promise.race([one.exited, two.exited]));
    runs.push(...(await Promise.all([one.exited, two.exited])));

    const [loser, winner] = [...runs].sort((a, b) => (b.code ?? 9) - (a.code ?? 9));
    expect([winner!.code, loser!.code]).toEqual([0, 1]);
    expect(loser!.stderr).toMatch(/another settler holds the settlement lock/);
    // Progress (each step, the transaction as it is sent) goes to stderr; the report to stdout.
    expect(loser!.stderr).not.toMatch(/sent tx/);
    const tx = /sent tx (0x[0-9a-f]{64})/.exec(winner!.stderr)?.[1];
    expect(tx, winner!.stderr).toBeDefined();
    for (const user of users) expect(winner!.stdout).toMatch(new RegExp(`${user.address}  receipts 2  .*  SUCCESS  tx ${tx}`));

    expect(sentTransactions() - sentBefore).toBe(1);
    for (const user of users) {
      expect(await settlementEventsFor(c, user.address)).toEqual([{ status: 0, unsettled: 0n, tx }]);
      expect((await accountOf(c, user.address)).nonce).toBe(2n);
    }
    expect(await receiptStates(ids)).toEqual(ids.map(() => ({ state: 'settled', tx })));
  }, 90_000);

  it("two replicas' settlement rounds at once: one settles, the other answers locked", async () => {
    showLogsOnFailure();
    const users = await fundedUsers(c, 2);
    const ids = await jobsOnBothReplicas(users);
    const sentBefore = sentTransactions();

    const round = (r: ChildDaemon) =>
      fetch(`${r.url}/v1/admin/settle`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }).then(async (res) => {
        expect(res.status, r.name).toBe(200);
        return (await res.json()) as { outcome: string; users: Array<{ user: string; outcome: string }>; transactions: string[] };
      });
    const a = round(sa);
    const b = round(sb);
    holdNextTransaction(Promise.race([a, b]));
    const outcomes = await Promise.all([a, b]);

    const winner = outcomes.find((o) => o.outcome === 'completed');
    expect(outcomes.map((o) => o.outcome).sort()).toEqual(['completed', 'locked']);
    expect(winner!.transactions).toHaveLength(1);
    const tx = winner!.transactions[0]!;
    expect(winner!.users.map((u) => [u.user.toLowerCase(), u.outcome]).sort()).toEqual(users.map((u) => [u.address.toLowerCase(), 'settled']).sort());

    expect(sentTransactions() - sentBefore).toBe(1);
    for (const user of users) expect(await settlementEventsFor(c, user.address)).toEqual([{ status: 0, unsettled: 0n, tx }]);
    expect(await receiptStates(ids)).toEqual(ids.map(() => ({ state: 'settled', tx })));
  }, 60_000);
});
