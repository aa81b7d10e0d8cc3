import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { formatEther, type Wallet } from 'ethers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CommandIo } from '../../src/commands/command-io.js';
import { accounts, earnings } from '../../src/commands/ledger.js';
import { completedJob, daemonConfig, fundedUsers, PRICE, setupBillingChain, startBillingDaemon, type BillingChain } from '../billing/fixture.js';
import type { TestDaemon } from '../helpers/daemon.js';

/** `pixeld accounts` and `pixeld earnings` read the running daemon's books and the chain. */

let c: BillingChain;
let d: TestDaemon;
let users: Wallet[];
let configFile: string;

function capture(env: NodeJS.ProcessEnv = {}): { io: CommandIo; out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { stdout: (l) => out.push(l), stderr: (l) => err.push(l), isTTY: false, env }, out, err };
}

beforeAll(async () => {
  c = await setupBillingChain();
  d = await startBillingDaemon(c);
  users = await fundedUsers(c, 2);
  await completedJob(d, c, users[0]!, 2);
  const settled = await d.daemon.settler!.runRound({ reason: 'test' });
  expect(settled.outcome).toBe('completed');
  await completedJob(d, c, users[1]!, 3);
  configFile = path.join(d.dataDir, 'pixeld.json');
  writeFileSync(configFile, JSON.stringify({ ...daemonConfig(c), dataDir: d.dataDir }));
}, 120_000);

afterAll(async () => {
  await d?.close();
  await c?.anvil.stop();
});

describe('pixeld accounts', () => {
  it('lists each user with balance, unsettled and available, next to the chain', async () => {
    const { io, out, err } = capture({ PIXELD_PROVIDER_KEY: c.provider.privateKey });
    expect(await accounts({ configPath: configFile }, io), err.join('\n')).toBe(0);
    const text = out.join('\n');
    expect(text).toContain(`provider ${c.provider.address}: 2 account(s)`);
    const line0 = out.find((l) => l.startsWith(users[0]!.address))!;
    const line1 = out.find((l) => l.startsWith(users[1]!.address))!;
    // users[0] was settled: nothing unsettled; its balance went down by the two images.
    expect(line0.split(/\s+/)).toEqual([users[0]!.address, formatEther(10n ** 18n - 2n * PRICE), '0.0', '0.0', '0.0', formatEther(10n ** 18n - 2n * PRICE), '1', 'yes']);
    expect(line1.split(/\s+/)).toEqual([users[1]!.address, '1.0', '0.0', formatEther(3n * PRICE), '0.0', formatEther(10n ** 18n - 3n * PRICE), '0', 'yes']);
  });

  it('--json: one object with every account in wei (decimal strings) and the totals; progress on stderr', async () => {
    const { io, out, err } = capture({ PIXELD_PROVIDER_KEY: c.provider.privateKey });
    expect(await accounts({ configPath: configFile, json: true }, io), err.join('\n')).toBe(0);
    expect(out).toHaveLength(1);
    const report = JSON.parse(out[0]!) as Record<string, any>;
    const spent = String(10n ** 18n - 2n * PRICE);
    expect(report).toEqual({
      provider: c.provider.address,
      accounts: expect.arrayContaining([
        { user: users[0]!.address, balanceWei: spent, pendingRefundWei: '0', unsettledWei: '0', reservedWei: '0', availableWei: spent, blocked: false, nonce: '1', acknowledged: true },
        {
          user: users[1]!.address,
          balanceWei: String(10n ** 18n),
          pendingRefundWei: '0',
          unsettledWei: String(3n * PRICE),
          reservedWei: '0',
          availableWei: String(10n ** 18n - 3n * PRICE),
          blocked: false,
          nonce: '0',
          acknowledged: true,
        },
      ]),
      totals: { balanceWei: String(2n * 10n ** 18n - 2n * PRICE), unsettledWei: String(3n * PRICE), reservedWei: '0' },
    });
    expect(report.accounts).toHaveLength(2);
    expect(err).toEqual([
      "… opening the daemon's database",
      `… reading the accounts of provider ${c.provider.address} on chain ${c.anvil.chainId}`,
      "… reading this daemon's receipts and reservations for 2 user(s)",
    ]);
  });

  it('needs the chain in the config', async () => {
    const bare = path.join(d.dataDir, 'bare.json');
    writeFileSync(bare, JSON.stringify({ dataDir: d.dataDir }));
    const { io, err } = capture();
    expect(await accounts({ configPath: bare }, io)).toBe(2);
    expect(err.join('\n')).toMatch(/chain\.rpcUrl, chain\.chainId, chain\.servingAddress are required/);
  });
});

describe('pixeld earnings', () => {
  it('sums receipts per day by settlement state', async () => {
    const { io, out } = capture();
    expect(await earnings({ configPath: configFile }, io)).toBe(0);
    const today = new Date().toISOString().slice(0, 10);
    const day = out.find((l) => l.startsWith(today))!.split(/\s+/);
    expect(day).toEqual([today, '2', '5', formatEther(2n * PRICE), '0.0', formatEther(3n * PRICE), '0.0', '0.0']);
    expect(out.at(-1)!.split(/\s+/).slice(0, 3)).toEqual(['total', '2', '5']);
  });

  it('--json --quiet: only the object, amounts in wei', async () => {
    const { io, out, err } = capture();
    expect(await earnings({ configPath: configFile, json: true, quiet: true }, io)).toBe(0);
    expect(err).toEqual([]);
    const today = new Date().toISOString().slice(0, 10);
    const totals = { receipts: 2, images: 5, settledWei: String(2n * PRICE), partialWei: '0', unsettledWei: String(3n * PRICE), offchainWei: '0', unbillableWei: '0' };
    expect(JSON.parse(out.join(''))).toEqual({ days: [{ day: today, ...totals }], total: totals });
  });
});
