import { spawn } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Wallet } from 'ethers';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SETTLEMENT_LOCK } from '../../src/billing/settlement/settler.js';
import { settle, type SettleIo } from '../../src/commands/settle.js';
import type { TestDaemon } from '../helpers/daemon.js';
import { startRpcProxy } from '../helpers/rpc-proxy.js';
import {
  PRICE,
  accountOf,
  completedJob,
  daemonConfig,
  fundedUsers,
  gasPaid,
  setupBillingChain,
  settlementEventsFor,
  startBillingDaemon,
  type BillingChain,
} from './fixture.js';

/**
 * `pixeld settle` against a real chain and the daemon's own data dir: its report, --dry-run, the lock,
 * and a settle process SIGKILLed right after its transaction reached the chain.
 */

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const LOCK_TTL_MS = 1_500;

let c: BillingChain;
const cleanups: Array<() => Promise<void> | void> = [];

beforeAll(async () => {
  c = await setupBillingChain();
}, 60_000);

afterAll(async () => {
  await c?.anvil.stop();
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A daemon without the provider wallet: only the command settles. */
async function daemon(): Promise<TestDaemon> {
  const d = await startBillingDaemon(c, { wallet: false });
  cleanups.push(() => rmSync(d.dataDir, { recursive: true, force: true }));
  cleanups.push(() => d.close());
  return d;
}

function configFile(d: TestDaemon, rpcUrl = c.anvil.rpcUrl): string {
  const file = path.join(d.dataDir, 'settle-config.json');
  const base = daemonConfig(c, {}, rpcUrl);
  writeFileSync(file, JSON.stringify({ ...base, billing: { ...base.billing, settlementLockTtlMs: LOCK_TTL_MS }, dataDir: d.dataDir }));
  return file;
}

function captureIo(): SettleIo & { out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return {
    out,
    err,
    stdout: (line) => out.push(line),
    stderr: (line) => err.push(line),
    env: { PIXELD_PROVIDER_KEY: c.provider.privateKey, NODE_ENV: 'test' },
  };
}

const lineFor = (lines: string[], user: Wallet) => lines.find((l) => l.trim().startsWith(user.address)) ?? '';

describe('pixeld settle', () => {
  it('prints receipts, amount, nonce, status and tx per user; --dry-run prepares and previews but persists and sends nothing', async () => {
    const d = await daemon();
    const [alice, bob] = (await fundedUsers(c, 2)) as [Wallet, Wallet];
    const aliceJobs = [await completedJob(d, c, alice, 1), await completedJob(d, c, alice, 2)];
    const bobJob = await completedJob(d, c, bob, 1);
    const config = configFile(d);
    const walletNonce = await c.anvil.provider.getTransactionCount(c.provider.address);

    const dry = captureIo();
    expect(await settle({ configPath: config, dryRun: true }, dry)).toBe(0);
    expect(dry.out).toContain('Dry run: nothing is sent. The items are signed and kept in the TEE journal: the next round sends exactly these.');
    expect(lineFor(dry.out, alice)).toMatch(/receipts 2 {2}3000000000000000 wei \(0\.003 0G\) {2}nonce 2 {2}would be SUCCESS$/);
    expect(lineFor(dry.out, bob)).toMatch(/receipts 1 {2}1000000000000000 wei \(0\.001 0G\) {2}nonce 1 {2}would be SUCCESS$/);
    expect(await c.anvil.provider.getTransactionCount(c.provider.address)).toBe(walletNonce);
    for (const jobId of [...aliceJobs, bobJob]) expect((await d.daemon.billing.getReceipt(jobId))!.state).toBe('unsettled');
    expect(await d.daemon.billing.openBatches()).toEqual([]);

    const real = captureIo();
    expect(await settle({ configPath: config }, real)).toBe(0);
    // Each step on stderr, in the order it happened; the report alone on stdout.
    const steps = [
      /^… opening the daemon's database$/,
      /^… sqlite .*pixeld\.sqlite; chain \d+, contract 0x[0-9a-fA-F]{40}$/,
      /^… opening the TEE key/,
      /^… 2 users, 3 receipts, 1 transaction\(s\)$/,
      /^… reading 2 account\(s\) and signing their items with the TEE key$/,
      /^… previewing 2 signed item\(s\) on chain/,
      /^… estimating gas for 2 item\(s\)$/,
      /^… sent tx 0x[0-9a-f]{64} .*waiting for it to be mined/,
      /^… tx 0x[0-9a-f]{64} mined in block \d+$/,
    ];
    const at = steps.map((step) => real.err.findIndex((l) => step.test(l)));
    expect(at, real.err.join('\n')).not.toContain(-1);
    expect(at).toEqual([...at].sort((a, b) => a - b));
    expect(real.out.filter((l) => l.startsWith('…'))).toEqual([]);
    const txLine = real.err.find((l) => /… sent tx 0x[0-9a-f]{64}/.test(l));
    const tx = /sent tx (0x[0-9a-f]{64})/.exec(txLine!)![1]!;
    const block = (await c.anvil.provider.getTransactionReceipt(tx))!.blockNumber;
    expect(lineFor(real.out, alice)).toBe(
      `  ${alice.address}  receipts 2  3000000000000000 wei (0.003 0G)  nonce 2  SUCCESS  tx ${tx} (block ${block})`,
    );
    expect(lineFor(real.out, bob)).toBe(`  ${bob.address}  receipts 1  1000000000000000 wei (0.001 0G)  nonce 1  SUCCESS  tx ${tx} (block ${block})`);
    expect(real.out).toContain('Paid to the provider: 4000000000000000 wei (0.004 0G) in 1 transaction(s).');
    for (const jobId of [...aliceJobs, bobJob]) expect((await d.daemon.billing.getReceipt(jobId))!.state).toBe('settled');

    const nothing = captureIo();
    expect(await settle({ configPath: config }, nothing)).toBe(0);
    expect(nothing.out).toContain('Nothing to settle.');
  });

  it('--json: one JSON object on stdout with every user, the transaction and what was paid (wei as decimal strings); --quiet: no progress', async () => {
    const d = await daemon();
    const [alice, bob] = (await fundedUsers(c, 2)) as [Wallet, Wallet];
    await completedJob(d, c, alice, 2);
    await completedJob(d, c, bob, 1);
    const io = captureIo();
    expect(await settle({ configPath: configFile(d), json: true }, io)).toBe(0);
    expect(io.out).toHaveLength(1);
    const report = JSON.parse(io.out[0]!) as Record<string, any>;
    const tx = report.transactions[0] as string;
    const block = (await c.anvil.provider.getTransactionReceipt(tx))!.blockNumber;
    expect(report).toEqual({
      provider: c.provider.address,
      contract: c.serving.target as string,
      chainId: c.anvil.chainId,
      teeSigner: expect.stringMatching(/^0x[0-9a-fA-F]{40}$/),
      dryRun: false,
      outcome: 'completed',
      reconciled: [],
      users: expect.arrayContaining([
        { user: alice.address, receipts: 1, amountWei: String(2n * PRICE), nonce: '1', outcome: 'settled', status: 'SUCCESS', txHash: tx, block, batchId: expect.stringMatching(/^stl_/) },
        { user: bob.address, receipts: 1, amountWei: String(PRICE), nonce: '1', outcome: 'settled', status: 'SUCCESS', txHash: tx, block, batchId: expect.stringMatching(/^stl_/) },
      ]),
      transactions: [expect.stringMatching(/^0x[0-9a-f]{64}$/)],
      paidWei: String(3n * PRICE),
    });
    expect(report.users).toHaveLength(2);
    expect(io.err.some((l) => l.startsWith('… sent tx'))).toBe(true);

    const quiet = captureIo();
    expect(await settle({ configPath: configFile(d), json: true, quiet: true }, quiet)).toBe(0);
    expect(quiet.err).toEqual([]);
    expect(JSON.parse(quiet.out[0]!)).toMatchObject({ outcome: 'completed', users: [], transactions: [], paidWei: '0' });
  });

  it('exits 1 and says so when another settler holds the lock', async () => {
    const d = await daemon();
    const [user] = (await fundedUsers(c, 1)) as [Wallet];
    const jobId = await completedJob(d, c, user);
    expect(await d.daemon.billing.tryLock(SETTLEMENT_LOCK, 'a-running-daemon', Date.now(), 60_000)).toBe(true);

    const io = captureIo();
    expect(await settle({ configPath: configFile(d) }, io)).toBe(1);
    expect(io.err.join('\n')).toMatch(/another settler holds the settlement lock/);
    expect((await d.daemon.billing.getReceipt(jobId))!.state).toBe('unsettled');

    await d.daemon.billing.unlock(SETTLEMENT_LOCK, 'a-running-daemon');
    expect(await settle({ configPath: configFile(d) }, captureIo())).toBe(0);
  });

  it('reports configuration problems with exit 2', async () => {
    const d = await daemon();
    const io = captureIo();
    io.env = { NODE_ENV: 'test' };
    expect(await settle({ configPath: configFile(d) }, io)).toBe(2);
    expect(io.err.join('\n')).toMatch(/no provider wallet: set env PIXELD_PROVIDER_KEY/);
  });

  it('a settle process killed after its transaction reached the chain, before it heard back: the next run settles it exactly once', async () => {
    const d = await daemon();
    const [alice, bob] = (await fundedUsers(c, 2)) as [Wallet, Wallet];
    const jobs = [await completedJob(d, c, alice, 2), await completedJob(d, c, bob, 1)];
    const proxy = await startRpcProxy(c.anvil.rpcUrl);
    cleanups.push(() => proxy.close());
    const providerBefore = await c.anvil.provider.getBalance(c.provider.address);

    const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO, 'src', 'cli.ts'), 'settle', '--config', configFile(d, proxy.url)], {
      cwd: REPO,
      env: { ...process.env, PIXELD_PROVIDER_KEY: c.provider.privateKey, NODE_ENV: 'test' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.once('exit', (code, signal) => resolve(signal ?? code)));
    proxy.once('eth_sendRawTransaction', async (call) => {
      await call.forward();
      child.kill('SIGKILL');
      return 'drop' as const;
    });
    expect(await exited, output).toBe('SIGKILL');

    const [open] = await d.daemon.billing.openBatches();
    expect(open).toMatchObject({ state: 'sent' });
    const hash = open!.txHashes[0]!;
    const mined = (await c.anvil.provider.getTransactionReceipt(hash))!;
    expect(mined.status).toBe(1);

    // The dead process's lock outlives it until its TTL: a restart right away is told so.
    const tooSoon = captureIo();
    expect(await settle({ configPath: configFile(d) }, tooSoon)).toBe(1);
    expect(tooSoon.err.join('\n')).toMatch(/another settler holds the settlement lock/);
    await new Promise((r) => setTimeout(r, LOCK_TTL_MS));

    const restart = captureIo();
    expect(await settle({ configPath: configFile(d) }, restart)).toBe(0);
    expect(restart.out).toContain('Reconciled from earlier runs:');
    expect(lineFor(restart.out, alice)).toMatch(new RegExp(`receipts 1  2000000000000000 wei \\(0\\.002 0G\\)  nonce 1  SUCCESS  tx ${hash}`));
    expect(lineFor(restart.out, bob)).toMatch(new RegExp(`nonce 1  SUCCESS  tx ${hash}`));

    for (const jobId of jobs) expect(await d.daemon.billing.getReceipt(jobId)).toMatchObject({ state: 'settled', settledTx: hash });
    for (const user of [alice, bob]) {
      expect(await settlementEventsFor(c, user.address)).toEqual([{ status: 0, unsettled: 0n, tx: hash }]);
      expect((await accountOf(c, user.address)).nonce).toBe(1n);
    }
    // Paid once: one settlement transaction from the provider wallet, and nothing else sent since.
    expect((await c.anvil.provider.getBalance(c.provider.address)) - providerBefore).toBe(3n * PRICE - gasPaid(mined));
    expect(await d.daemon.billing.openBatches()).toEqual([]);
  }, 40_000);
});
