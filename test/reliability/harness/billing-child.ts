import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Wallet } from 'ethers';
import { DEV_KEY_FILE } from '../../../src/tee/dev-key.js';
import { bearer, fundedUsers, NEVER, PRICE, setupBillingChain, type BillingChain } from '../../billing/fixture.js';
import { startChild, type ChildDaemon } from './child-daemon.js';

/**
 * The paying setup of the load and crash runs: anvil with InferenceServing, the provider's service
 * registered and acknowledged with a TEE key, funded users with 0G session tokens, and `pixeld serve` as a
 * child process signing with that key, holding the provider wallet (so it settles) and an admin token.
 */

export const MODEL = 'ref';
export { PRICE };

export interface PayingSetup {
  chain: BillingChain;
  users: Array<{ wallet: Wallet; auth: string }>;
  root: string;
  dataDir: string;
  adminToken: string;
  /** Every secret the daemon holds or sees, for the log grep. */
  secrets: Record<string, string>;
  start(name: string, backend: Record<string, unknown>): Promise<ChildDaemon>;
}

export async function payingSetup(userCount: number): Promise<PayingSetup> {
  const chain = await setupBillingChain();
  const wallets = await fundedUsers(chain, userCount);
  const users = await Promise.all(wallets.map(async (wallet) => ({ wallet, auth: await bearer(chain, wallet) })));
  const root = mkdtempSync(path.join(tmpdir(), 'pixeld-reliability-'));
  const dataDir = path.join(root, 'data');
  mkdirSync(dataDir);
  writeFileSync(path.join(dataDir, DEV_KEY_FILE), `${chain.teeKey.privateKey}\n`, { mode: 0o600 });
  const adminToken = `adm-${randomBytes(24).toString('hex')}`;
  const secrets: Record<string, string> = {
    'provider wallet key': chain.provider.privateKey.slice(2),
    'TEE signing key': chain.teeKey.privateKey.slice(2),
    'admin token': adminToken,
    ...Object.fromEntries(users.map((u, i) => [`session token of user ${i}`, u.auth.slice('Bearer '.length)])),
  };
  return {
    chain,
    users,
    root,
    dataDir,
    adminToken,
    secrets,
    start(name, backend) {
      return startChild({
        name,
        dataDir,
        config: {
          log: { level: 'info' },
          auth: { mode: '0g' },
          chain: { rpcUrl: chain.anvil.rpcUrl, chainId: chain.anvil.chainId, servingAddress: chain.serving.target as string },
          provider: { address: chain.provider.address },
          admin: { tokenEnv: 'PIXELD_TEST_ADMIN_TOKEN' },
          billing: { settlementCron: NEVER, thresholdCheckIntervalMs: 3_600_000 },
          jobs: { retryBackoffMs: 50 },
          backends: [{ id: 'reference', type: 'reference', maxQueuedJobs: 10_000, ...backend }],
          models: [
            {
              id: MODEL,
              backend: 'reference',
              capabilities: ['generation'],
              sizes: ['64x64'],
              maxN: 4,
              maxInFlight: 10_000,
              pricePerImageWei: PRICE.toString(),
            },
          ],
        },
        env: { PIXELD_PROVIDER_KEY: chain.provider.privateKey, PIXELD_TEST_ADMIN_TOKEN: adminToken },
      });
    },
  };
}

/** Names of the secrets that appear anywhere in `text` (in any of the forms a log could carry them). */
export function secretsIn(text: string, secrets: Record<string, string>): string[] {
  const haystack = text.toLowerCase();
  const found: string[] = [];
  for (const [name, secret] of Object.entries(secrets)) {
    const forms = [secret, Buffer.from(secret).toString('base64')];
    // A session token is base64 of "json|signature": its signature alone must not leak either.
    if (secret.startsWith('app-sk-')) forms.push(Buffer.from(secret.slice(7), 'base64').toString('utf8').split('|').at(-1)!);
    if (forms.some((f) => f.length >= 16 && haystack.includes(f.toLowerCase()))) found.push(name);
  }
  return found;
}
