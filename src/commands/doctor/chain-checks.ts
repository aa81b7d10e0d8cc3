import { formatEther } from 'ethers';
import { nextScheduledRound } from '../../billing/settlement/triggers.js';
import { gasLimitFor } from '../../chain/gas.js';
import { getService } from '../../chain/get-service.js';
import { loadProviderWallet, resolveProviderAddress } from '../../chain/provider-wallet.js';
import { createChainClient } from '../../chain/serving-contract.js';
import { ConfigError } from '../../config/load.js';
import type { Config } from '../../config/schema.js';
import { openStores } from '../../jobs/open-stores.js';
import { CommandError, formatWei, requireChainConfig } from '../command-io.js';
import { buildServiceParams, changedFields, formatField, publicUrl, unacknowledgedNote } from '../register.js';
import { describeError, fail, pass, skip, warn, type Check, type CheckOutcome } from './check.js';
import { billsOnChain } from './tee-checks.js';

/** The 0G side: the RPC and contract, the provider's service as the chain has it, gas, and what is owed. */

/**
 * Gas one user's item costs in a settleFeesWithTEE transaction: 52,401 measured on anvil (README,
 * Benchmarks: "gas per user"), rounded up. A transaction carries billing.usersPerTransaction items.
 */
const SETTLEMENT_GAS_PER_USER = 60_000n;
const TRANSACTION_BASE_GAS = 21_000n;
/** Below this many settlement transactions' worth of gas the wallet is reported low. */
const FEW_SETTLEMENT_TRANSACTIONS = 3n;

const REGISTER = 'run npx pixeld register (npx pixeld register --dry-run shows the change)';

export function chainChecks(config: Readonly<Config>): Check[] {
  const configured = billsOnChain(config);
  const notConfigured = (): CheckOutcome => skip('skipped: chain.* is not set (no 0G billing, nothing registered)');
  return [
    {
      id: 'chain-rpc',
      group: 'chain',
      title: 'RPC and chain id',
      hint: `check chain.rpcUrl${config.chain.rpcUrl ? ` (${originOf(config.chain.rpcUrl)})` : ''} and that this machine reaches it`,
      async run(state) {
        if (!configured) return notConfigured();
        let chainConfig;
        try {
          chainConfig = requireChainConfig(config, 'doctor');
        } catch (err) {
          if (err instanceof CommandError) return fail(err.message, 'set chain.rpcUrl, chain.chainId and chain.servingAddress');
          throw err;
        }
        const client = createChainClient({ ...chainConfig, freshReads: true });
        state.cleanups.push(() => client.close());
        const where = originOf(chainConfig.rpcUrl);
        let answered: number;
        let block: number;
        try {
          answered = Number(await client.provider.send('eth_chainId', []));
          block = await client.provider.getBlockNumber();
        } catch (err) {
          return fail(`${where}: ${describeError(err)}`, this.hint);
        }
        if (answered !== chainConfig.chainId) {
          return fail(
            `${where} is chain ${answered}, chain.chainId is ${chainConfig.chainId}`,
            `set chain.chainId to ${answered}, or chain.rpcUrl to an endpoint of chain ${chainConfig.chainId}`,
          );
        }
        state.chain = client;
        return pass(`${where}, chain ${answered}, block ${block}`);
      },
    },
    {
      id: 'contract',
      group: 'chain',
      title: 'InferenceServing contract',
      needs: ['chain-rpc'],
      hint: "set chain.servingAddress to the InferenceServing contract's address on this chain",
      async run(state) {
        const chain = state.chain!;
        const code = await chain.provider.getCode(chain.servingAddress);
        if (code === '0x') return fail(`no contract at ${chain.servingAddress} on chain ${chain.chainId}`, this.hint);
        return pass(`${chain.servingAddress} (${(code.length - 2) / 2} bytes of code)`);
      },
    },
    {
      id: 'provider',
      group: 'chain',
      title: 'provider wallet',
      hint: `set env ${config.provider.wallet.privateKeyEnv} to the provider wallet's key, or provider.wallet.keystoreFile`,
      async run(state) {
        if (!configured) return notConfigured();
        let wallet;
        try {
          wallet = await loadProviderWallet(config.provider.wallet, state.env);
          state.providerAddress = resolveProviderAddress(config.provider.address, wallet);
        } catch (err) {
          if (err instanceof ConfigError) return fail(err.message, this.hint);
          throw err;
        }
        if (/^0x0{40}$/.test(state.providerAddress)) {
          return fail('no provider address: neither provider.address nor a provider wallet is set', this.hint);
        }
        if (!wallet) {
          return warn(
            `${state.providerAddress} (provider.address); its key is not in this environment, and the daemon needs it to settle`,
            `${this.hint} where the daemon runs`,
          );
        }
        return pass(`${state.providerAddress}, key loaded`);
      },
    },
    {
      id: 'service-registered',
      group: 'chain',
      title: 'service registered',
      needs: ['contract', 'provider'],
      hint: 'run npx pixeld register',
      async run(state) {
        const service = await getService(state.chain!, { provider: state.providerAddress! });
        if (!service) {
          return fail(`no service for provider ${state.providerAddress} on contract ${state.chain!.servingAddress}`, this.hint);
        }
        state.service = service;
        return pass(`model ${service.model}, ${formatField('outputPrice', service.outputPrice)}, url ${service.url}`);
      },
    },
    {
      id: 'service-fields',
      group: 'chain',
      title: 'service matches config',
      needs: ['service-registered'],
      hint: REGISTER,
      async run(state) {
        const onChain = state.service!;
        const model = config.models.find((m) => m.id === onChain.model);
        if (!model) {
          const ids = config.models.map((m) => m.id).join(', ');
          return fail(`the service names model ${onChain.model}, not one of this config's (${ids})`, 'run npx pixeld register --model <id>');
        }
        if (config.provider.service.url === undefined) {
          return warn(`provider.service.url is not set: the url cannot be compared (chain: ${onChain.url})`, 'set provider.service.url to the public base URL');
        }
        let url: string;
        try {
          url = publicUrl(config.provider.service.url);
        } catch (err) {
          if (err instanceof CommandError) return fail(err.message, 'fix provider.service.url');
          throw err;
        }
        // The signer has its own check (against the running daemon); here it is taken as the chain has it.
        const local = buildServiceParams({
          model,
          url,
          tee: { mode: config.tee.mode, insecure: config.tee.mode === 'dev', address: onChain.teeSignerAddress },
          extraInfo: config.provider.service.additionalInfo,
          env: state.env,
        });
        const differ = changedFields(onChain, local);
        if (differ.length > 0) {
          const lines = differ.map((f) => `${f}: chain ${formatField(f, onChain[f])}, config ${formatField(f, local[f])}`);
          return fail(lines.join('; '), REGISTER);
        }
        return pass(`url, model ${model.id}, price, verifiability and additionalInfo match`);
      },
    },
    {
      id: 'service-signer',
      group: 'chain',
      title: 'service TEE signer',
      needs: ['service-registered'],
      hint: 'run npx pixeld register, then have the contract owner acknowledge the new signer',
      async run(state) {
        const onChain = state.service!.teeSignerAddress;
        const signer = state.daemonSigner ?? state.localKey?.address;
        if (!signer) return skip("skipped: the daemon's signer is not known (attestation did not pass)");
        const whose = state.daemonSigner ? 'the running daemon signs with' : "this config's TEE key is";
        if (onChain.toLowerCase() !== signer.toLowerCase()) {
          return fail(`on chain ${onChain}, ${whose} ${signer}: receipts and settlements will not verify`, this.hint);
        }
        return pass(`${onChain}, ${state.daemonSigner ? 'the running daemon\'s' : "this config's"} key`);
      },
    },
    {
      id: 'service-acknowledged',
      group: 'chain',
      title: 'TEE signer acknowledged',
      needs: ['service-registered'],
      hint: 'ask the contract owner to acknowledge the signer (acknowledgeTEESignerByOwner); npx pixeld service shows it',
      async run(state) {
        const service = state.service!;
        if (!service.teeSignerAcknowledged) return fail(unacknowledgedNote(service.teeSignerAddress), this.hint);
        return pass(`teeSignerAcknowledged is true for ${service.teeSignerAddress}`);
      },
    },
    {
      id: 'gas',
      group: 'chain',
      title: 'provider wallet gas',
      needs: ['chain-rpc', 'provider'],
      hint: `send 0G to the provider wallet`,
      async run(state) {
        const { provider } = state.chain!;
        const address = state.providerAddress!;
        const [balance, fees] = await Promise.all([provider.getBalance(address), provider.getFeeData()]);
        const gasPrice = fees.maxFeePerGas ?? fees.gasPrice;
        if (gasPrice === null) return fail('the node reports no gas price', 'check chain.rpcUrl');
        const perTransaction =
          gasLimitFor(TRANSACTION_BASE_GAS + BigInt(config.billing.usersPerTransaction) * SETTLEMENT_GAS_PER_USER) * gasPrice;
        const text = `${formatWei(balance)}; a settlement transaction of ${config.billing.usersPerTransaction} users costs up to ${formatEther(perTransaction)} 0G`;
        if (balance < perTransaction) return fail(`${text}: not enough for one`, `${this.hint} (${address})`);
        if (balance < FEW_SETTLEMENT_TRANSACTIONS * perTransaction) {
          return warn(`${text}: enough for ${balance / perTransaction} only`, `${this.hint} (${address})`);
        }
        return pass(text);
      },
    },
    {
      id: 'unsettled',
      group: 'billing',
      title: 'unsettled fees',
      needs: ['database'],
      hint: 'check database.url (env PIXELD_DATABASE_URL) or dataDir: doctor reads the daemon\'s store',
      async run() {
        if (!configured) return notConfigured();
        const stores = await openStores(config, { mustExist: true });
        let owing;
        try {
          owing = await stores.billing.usersWithUnsettled();
        } finally {
          await stores.close();
        }
        const total = owing.reduce((sum, u) => sum + u.feeWei, 0n);
        const receipts = owing.reduce((sum, u) => sum + u.receipts, 0);
        const next = nextScheduledRound(config.billing.settlementCron);
        const when = next
          ? `next round ${next.toISOString()} (billing.settlementCron "${config.billing.settlementCron}")`
          : `billing.settlementCron "${config.billing.settlementCron}" is not a valid cron expression`;
        const owed = `${formatWei(total)} in ${receipts} receipt${receipts === 1 ? '' : 's'} of ${owing.length} user${owing.length === 1 ? '' : 's'}`;
        if (!next) return fail(`${owed}; ${when}`, 'fix billing.settlementCron (node-cron syntax, e.g. "*/10 * * * *")');
        return pass(`${owed}; ${when}; a user owing billing.userThresholdWei (${formatEther(config.billing.userThresholdWei)} 0G) is settled at once`);
      },
    },
  ];
}

/** The RPC endpoint without path or query, which may hold an API key. */
function originOf(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return '(unparsable chain.rpcUrl)';
  }
}
