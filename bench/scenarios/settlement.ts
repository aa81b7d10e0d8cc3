import { performance } from 'node:perf_hooks';
import path from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Wallet, parseEther, type Wallet as WalletType } from 'ethers';
import { Settler } from '../../src/billing/settlement/settler.js';
import { sqliteBillingStore } from '../../src/billing/sqlite-billing-store.js';
import { createChainClient } from '../../src/chain/serving-contract.js';
import { configSchema } from '../../src/config/schema.js';
import { openSqliteDatabase } from '../../src/jobs/sqlite/database.js';
import { sqliteJobStore } from '../../src/jobs/sqlite/sqlite-store.js';
import { silentLogger } from '../../src/obs/logger.js';
import type { TeeKeyProvider } from '../../src/tee/key-provider.js';
import { createFundedAccount, deployInferenceServing, registerAcknowledgedService, startAnvil } from '../../test/chain/anvil.js';
import { completedJob } from '../completed-job.js';
import type { BenchRow, BenchScenario } from '../table.js';

const USERS = 200;
const RECEIPTS = 10_000;
const PRICE = parseEther('0.0001');
const TARGET_SECONDS = 60;

/**
 * Issue #7's scenario 7: 10,000 receipts across 200 users settled in one round on anvil, with the real
 * store, Merkle trees, TEE signatures, preview and settleFeesWithTEE. The receipts are made through the
 * job store's real completion path (signed), which is setup, not measured.
 */
export const settlementScenario: BenchScenario = {
  name: 'settlement',
  async run(): Promise<BenchRow[]> {
    const anvil = await startAnvil();
    const dir = mkdtempSync(path.join(tmpdir(), 'pixeld-bench-settle-'));
    try {
      const [owner, provider] = anvil.wallets as [WalletType, WalletType];
      const { contract: serving } = await deployInferenceServing(owner);
      const teeWallet = new Wallet(Wallet.createRandom().privateKey);
      await registerAcknowledgedService(serving, owner, provider, teeWallet.address, { outputPrice: PRICE });
      const users = await anvil.fundWallets(USERS, parseEther('10'));
      await Promise.all(users.map((u) => createFundedAccount(serving, u, provider.address, parseEther('1'))));

      const db = openSqliteDatabase(path.join(dir, 'pixeld.sqlite'));
      const jobs = sqliteJobStore(db);
      const billing = sqliteBillingStore(db);
      const tee: TeeKeyProvider = {
        mode: 'tdx',
        teeLabel: 'tdx',
        insecure: false,
        keySource: 'bench',
        address: teeWallet.address,
        signer: teeWallet,
        journalDir: dir,
        signatureChain: [],
        info: async () => undefined,
        quote: async () => undefined,
      };
      for (let i = 0; i < RECEIPTS; i += 1) {
        await completedJob({ store: jobs, tee, provider: provider.address, user: users[i % USERS]!.address, pricePerImageWei: PRICE, index: i });
      }

      const chain = createChainClient({ rpcUrl: anvil.rpcUrl, chainId: anvil.chainId, servingAddress: serving.target as string, rpcTimeoutMs: 10_000, freshReads: true });
      const billingConfig = configSchema.parse({ backends: [{ id: 'b', type: 'reference' }], models: [{ id: 'm', backend: 'b', capabilities: ['generation'], sizes: ['64x64'] }] }).billing;
      const settler = new Settler({ billing, chain, wallet: new Wallet(provider.privateKey), providerAddress: provider.address, tee, billingConfig, logger: silentLogger(), pollIntervalMs: 50 });
      const before = await anvil.provider.getBalance(provider.address);
      const firstBlock = (await anvil.provider.getBlockNumber()) + 1;
      const started = performance.now();
      const round = await settler.runRound({ reason: 'bench' });
      const seconds = (performance.now() - started) / 1000;
      // What reached the chain, read from the blocks the round made rather than from the round's own
      // report: the transactions the provider wallet sent, their gas and what it paid for them.
      const lastBlock = await anvil.provider.getBlockNumber();
      let gas = 0n;
      let gasCost = 0n;
      let sent = 0;
      for (let number = firstBlock; number <= lastBlock; number += 1) {
        const block = (await anvil.provider.getBlock(number, true))!;
        for (const tx of block.prefetchedTransactions) {
          if (tx.from !== provider.address) continue;
          const receipt = (await anvil.provider.getTransactionReceipt(tx.hash))!;
          sent += 1;
          gas += receipt.gasUsed;
          gasCost += receipt.gasUsed * receipt.gasPrice;
        }
      }
      const after = await anvil.provider.getBalance(provider.address);
      const settled = round.users.filter((u) => u.outcome === 'settled').length;
      await settler.stop();
      chain.close();
      db.close();
      const label = `settle ${RECEIPTS.toLocaleString('en-US')} receipts, ${USERS} users (anvil)`;
      const paidExactly = after - before + gasCost === PRICE * BigInt(RECEIPTS);
      return [
        { scenario: label, figure: 'wall time', value: seconds, unit: 's', target: `≤ ${TARGET_SECONDS} s`, pass: seconds <= TARGET_SECONDS && settled === USERS },
        {
          scenario: label,
          figure: 'transactions',
          value: sent,
          unit: '',
          target: '4',
          pass: sent === 4,
          note: round.transactions.length === sent ? undefined : `the round reported ${round.transactions.length} of them (the others it resolved from the users' on-chain nonces)`,
        },
        { scenario: label, figure: 'users settled', value: settled, unit: '', target: String(USERS), pass: settled === USERS },
        { scenario: label, figure: 'provider paid exactly the fees', value: paidExactly ? 1 : 0, unit: '', target: '1', pass: paidExactly },
        { scenario: label, figure: 'gas per user', value: Number(gas / BigInt(USERS)), unit: 'gas', target: 'info', pass: null },
        { scenario: label, figure: 'gas per receipt', value: Number(gas) / RECEIPTS, unit: 'gas', target: 'info', pass: null },
      ];
    } finally {
      await anvil.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};
