import { parseArgs } from 'node:util';
import { getService, type ServingService } from '../chain/get-service.js';
import { loadProviderWallet, resolveProviderAddress } from '../chain/provider-wallet.js';
import { createChainClient } from '../chain/serving-contract.js';
import type { Config, ModelConfig } from '../config/schema.js';
import { TeeError, type TeeKeyProvider } from '../tee/key-provider.js';
import {
  CommandError,
  EXIT_FAILED,
  EXIT_OK,
  EXIT_USAGE,
  loadCommandConfig,
  processIo,
  reportCommandError,
  requireChainConfig,
  type CommandIo,
} from './command-io.js';
import {
  buildServiceParams,
  type CommandDeps,
  describeTee,
  devKeyExists,
  formatField,
  openDaemonTeeKey,
  publicUrl,
  SERVICE_FIELDS,
  serviceLines,
  unacknowledgedNote,
} from './register.js';

/**
 * `pixeld service`: the provider's service as the chain has it, and how it compares with what
 * `pixeld register` would publish from the local config and this daemon's TEE key. Reads only.
 *
 * Exit status: 0 registered (whatever the comparison says), 1 not registered or the chain failed,
 * 2 bad arguments or configuration.
 */

export const SERVICE_USAGE = `Usage: pixeld service [--model <id>] [--config <file>]

Shows this provider's service on the InferenceServing contract (all fields, prices in wei and 0G, the
TEE acknowledgement) and how it compares with the local config and this daemon's TEE key.

  --model <id>        Compare with this model (default: the on-chain model if configured, else the only one)
  -c, --config <file> Config file (default: $PIXELD_CONFIG, else config/pixeld.yaml)

Needs chain.rpcUrl, chain.chainId, chain.servingAddress and the provider address (provider.address or
the provider wallet). Exit status: 0 registered, 1 not registered or failed, 2 bad arguments or configuration.
`;

export interface ServiceOptions {
  configPath?: string | undefined;
  model?: string | undefined;
}

export async function service(options: ServiceOptions, io: CommandIo, deps: Pick<CommandDeps, 'tee'> = {}): Promise<number> {
  try {
    return await serviceUnchecked(options, io, deps);
  } catch (err) {
    return reportCommandError('service', err, io);
  }
}

async function serviceUnchecked(options: ServiceOptions, io: CommandIo, deps: Pick<CommandDeps, 'tee'>): Promise<number> {
  const config = loadCommandConfig(options.configPath, io.env);
  const chainConfig = requireChainConfig(config, 'service');
  // Reading needs no key: the wallet only tells the address, and must agree with provider.address.
  const wallet = await loadProviderWallet(config.provider.wallet, io.env);
  const providerAddress = resolveProviderAddress(config.provider.address, wallet);
  if (/^0x0{40}$/i.test(providerAddress)) {
    throw new CommandError(
      `no provider address: set provider.address, or the provider wallet (env ${config.provider.wallet.privateKeyEnv})`,
      EXIT_USAGE,
    );
  }
  const tee = await teeKeyForComparison(config, io, deps.tee);

  const client = createChainClient({ ...chainConfig, freshReads: true });
  let onChain: ServingService | undefined;
  try {
    onChain = await getService(client, { provider: providerAddress });
  } finally {
    client.close();
  }
  if (!onChain) {
    io.stdout(
      `No service is registered for provider ${providerAddress} on contract ${chainConfig.servingAddress} ` +
        `(chain ${chainConfig.chainId}). Run pixeld register.`,
    );
    return EXIT_FAILED;
  }

  io.stdout(`Service of ${providerAddress} on contract ${chainConfig.servingAddress} (chain ${chainConfig.chainId}):`);
  for (const line of serviceLines(onChain)) io.stdout(line);
  io.stdout('');
  io.stdout(
    onChain.teeSignerAcknowledged
      ? `TEE acknowledgement: the contract owner acknowledged signer ${onChain.teeSignerAddress}.`
      : unacknowledgedNote(onChain.teeSignerAddress),
  );
  io.stdout('');

  const differences = compare(onChain, config, options, io, tee);
  io.stdout('');
  io.stdout(
    differences === 0
      ? 'The on-chain service matches the local config and this daemon\'s TEE key.'
      : `${differences} difference(s) with the local config: run pixeld register to publish it (pixeld register --dry-run shows the change).`,
  );
  return EXIT_OK;
}

type TeeForComparison = { key: TeeKeyProvider } | { key: undefined; why: string };

/** This daemon's TEE key, opened as the daemon opens it — but a dev key is never made just to be compared. */
async function teeKeyForComparison(config: Readonly<Config>, io: CommandIo, injected: TeeKeyProvider | undefined): Promise<TeeForComparison> {
  if (injected) return { key: injected };
  if (config.tee.mode === 'dev' && !devKeyExists(config)) {
    return { key: undefined, why: `tee.mode "dev" and no dev key in ${config.dataDir} yet (the daemon makes one when it first starts)` };
  }
  try {
    return { key: await openDaemonTeeKey(config, io.env) };
  } catch (err) {
    if (err instanceof TeeError) return { key: undefined, why: err.message };
    throw err;
  }
}

/** Prints one line per field (✓ agrees, ✗ differs) and returns how many differ. */
function compare(onChain: ServingService, config: Readonly<Config>, options: ServiceOptions, io: CommandIo, tee: TeeForComparison): number {
  io.stdout('Compared with the local config and this daemon:');
  if (tee.key) io.stdout(`    this daemon's TEE key: ${tee.key.address} (${describeTee(tee.key)})`);
  else io.stdout(`    this daemon's TEE key: unavailable — ${tee.why}`);

  const model = modelToCompare(config, options.model, onChain.model);
  if (!model) {
    const ids = config.models.map((m) => m.id).join(', ');
    io.stdout(`  ✗ model "${onChain.model}" on chain is not one of this config's models (${ids}) — run pixeld register --model <id>`);
    return 1;
  }
  const configuredUrl = config.provider.service.url;
  let url: string;
  try {
    url = publicUrl(configuredUrl ?? onChain.url);
  } catch {
    url = onChain.url;
  }
  const insecure = tee.key ? tee.key.insecure : config.tee.mode === 'dev';
  const mode = tee.key ? tee.key.mode : config.tee.mode;
  const local = buildServiceParams({
    model,
    url,
    tee: { mode, insecure, address: tee.key?.address ?? onChain.teeSignerAddress },
    extraInfo: config.provider.service.additionalInfo,
    env: io.env,
  });

  let differences = 0;
  for (const field of SERVICE_FIELDS) {
    if (field === 'url' && configuredUrl === undefined) {
      io.stdout(`  ? url: provider.service.url is not set locally (chain: ${onChain.url})`);
      continue;
    }
    if (field === 'teeSignerAddress') {
      if (!tee.key) {
        io.stdout(`  ? teeSignerAddress: cannot compare, this daemon's TEE key is unavailable`);
        continue;
      }
      if (onChain.teeSignerAddress.toLowerCase() !== tee.key.address.toLowerCase()) {
        differences++;
        io.stdout(
          `  ✗ teeSignerAddress on chain (${onChain.teeSignerAddress}) differs from this daemon's TEE key ` +
            `(${tee.key.address}) — run pixeld register; the daemon's signatures and settlements will not verify until then`,
        );
      } else {
        io.stdout(`  ✓ teeSignerAddress is this daemon's TEE key`);
      }
      continue;
    }
    if (onChain[field] === local[field]) {
      io.stdout(`  ✓ ${field} matches`);
    } else {
      differences++;
      io.stdout(`  ✗ ${field} differs: chain ${formatField(field, onChain[field])}, local ${formatField(field, local[field])} — run pixeld register`);
    }
  }
  return differences;
}

function modelToCompare(config: Readonly<Config>, requested: string | undefined, onChainModel: string): ModelConfig | undefined {
  if (requested !== undefined) {
    const model = config.models.find((m) => m.id === requested);
    if (!model) throw new CommandError(`--model ${requested}: not a configured model`, EXIT_USAGE);
    return model;
  }
  return config.models.find((m) => m.id === onChainModel) ?? (config.models.length === 1 ? config.models[0] : undefined);
}

/** `pixeld service …` from the command line. */
export async function runServiceCli(argv: string[], io: CommandIo = processIo()): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      options: {
        config: { type: 'string', short: 'c' },
        model: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    io.stderr(`pixeld service: ${(err as Error).message}\n\n${SERVICE_USAGE}`);
    return EXIT_USAGE;
  }
  if (values.help) {
    io.stdout(SERVICE_USAGE);
    return EXIT_OK;
  }
  return service({ configPath: values.config, model: values.model }, io);
}
