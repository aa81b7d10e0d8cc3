import { parseArgs } from 'node:util';
import { getService, type ServingService } from '../chain/get-service.js';
import { loadProviderWallet, resolveProviderAddress } from '../chain/provider-wallet.js';
import { createChainClient } from '../chain/serving-contract.js';
import type { Config, ModelConfig } from '../config/schema.js';
import { TeeError, type TeeKeyProvider } from '../tee/key-provider.js';
import {
  CommandError,
  commandOutput,
  EXIT_FAILED,
  EXIT_OK,
  EXIT_USAGE,
  loadCommandConfig,
  OUTPUT_FLAGS,
  OUTPUT_USAGE,
  processIo,
  reportCommandError,
  requireChainConfig,
  type CommandIo,
  type CommandOutput,
  type OutputOptions,
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
  type ServiceField,
  unacknowledgedNote,
} from './register.js';

/**
 * `pixeld service`: the provider's service as the chain has it, and how it compares with what
 * `pixeld register` would publish from the local config and this daemon's TEE key. Reads only.
 *
 * Exit status: 0 registered (whatever the comparison says), 1 not registered or the chain failed,
 * 2 bad arguments or configuration.
 */

export const SERVICE_USAGE = `Usage: pixeld service [--model <id>] [--json] [--quiet] [--config <file>]

Shows this provider's service on the InferenceServing contract (all fields, prices in wei and 0G, the
TEE acknowledgement) and how it compares with the local config and this daemon's TEE key.

  --model <id>        Compare with this model (default: the on-chain model if configured, else the only one)
${OUTPUT_USAGE}
                      {"provider","contract","chainId","registered","service":{…}|null,"teeKey":{"address","mode",
                       "insecure","keySource"}|{"unavailable"},"comparison":[{"field","verdict":"match|differs|unknown",
                       "chain","local"}],"differences"}
  -c, --config <file> Config file (default: $PIXELD_CONFIG, else config/pixeld.yaml)

Needs chain.rpcUrl, chain.chainId, chain.servingAddress and the provider address (provider.address or
the provider wallet). Exit status: 0 registered, 1 not registered or failed, 2 bad arguments or configuration.
`;

export interface ServiceOptions extends OutputOptions {
  configPath?: string | undefined;
  model?: string | undefined;
}

/** One field of the on-chain service next to what `pixeld register` would publish. */
export interface FieldComparison {
  field: ServiceField;
  /** `unknown`: nothing local to compare with (no provider.service.url, no TEE key here). */
  verdict: 'match' | 'differs' | 'unknown';
  chain: string | bigint;
  local: string | bigint | undefined;
}

/** What `pixeld service --json` prints. */
export interface ServiceReport {
  provider: string;
  contract: string;
  chainId: number;
  registered: boolean;
  service: ServingService | null;
  teeKey: { address: string; mode: string; insecure: boolean; keySource: string } | { unavailable: string };
  comparison: FieldComparison[];
  differences: number;
}

export async function service(options: ServiceOptions, io: CommandIo, deps: Pick<CommandDeps, 'tee'> = {}): Promise<number> {
  try {
    return await serviceUnchecked(options, io, deps);
  } catch (err) {
    return reportCommandError('service', err, io);
  }
}

async function serviceUnchecked(options: ServiceOptions, io: CommandIo, deps: Pick<CommandDeps, 'tee'>): Promise<number> {
  const out = commandOutput(io, options);
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
  out.progress(`opening this daemon's TEE key (tee.mode ${config.tee.mode})`);
  const tee = await teeKeyForComparison(config, io, deps.tee);

  out.progress(`reading the on-chain service of ${providerAddress} (chain ${chainConfig.chainId})`);
  const client = createChainClient({ ...chainConfig, freshReads: true });
  let onChain: ServingService | undefined;
  try {
    onChain = await getService(client, { provider: providerAddress });
  } finally {
    client.close();
  }
  const report: ServiceReport = {
    provider: providerAddress,
    contract: chainConfig.servingAddress,
    chainId: chainConfig.chainId,
    registered: onChain !== undefined,
    service: onChain ?? null,
    teeKey: tee.key
      ? { address: tee.key.address, mode: tee.key.mode, insecure: tee.key.insecure, keySource: tee.key.keySource }
      : { unavailable: tee.why },
    comparison: [],
    differences: 0,
  };
  if (!onChain) {
    out.result(report);
    out.line(
      `No service is registered for provider ${providerAddress} on contract ${chainConfig.servingAddress} ` +
        `(chain ${chainConfig.chainId}). Run pixeld register.`,
    );
    return EXIT_FAILED;
  }

  out.line(`Service of ${providerAddress} on contract ${chainConfig.servingAddress} (chain ${chainConfig.chainId}):`);
  for (const line of serviceLines(onChain)) out.line(line);
  out.line('');
  out.line(
    onChain.teeSignerAcknowledged
      ? `TEE acknowledgement: the contract owner acknowledged signer ${onChain.teeSignerAddress}.`
      : unacknowledgedNote(onChain.teeSignerAddress),
  );
  out.line('');

  report.comparison = compare(onChain, config, options, io, tee, out);
  report.differences = report.comparison.filter((c) => c.verdict === 'differs').length;
  out.result(report);
  out.line('');
  out.line(
    report.differences === 0
      ? 'The on-chain service matches the local config and this daemon\'s TEE key.'
      : `${report.differences} difference(s) with the local config: run pixeld register to publish it (pixeld register --dry-run shows the change).`,
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

/** Prints one line per field (✓ agrees, ✗ differs, ? cannot tell) and returns each field's verdict. */
function compare(
  onChain: ServingService,
  config: Readonly<Config>,
  options: ServiceOptions,
  io: CommandIo,
  tee: TeeForComparison,
  out: CommandOutput,
): FieldComparison[] {
  out.line('Compared with the local config and this daemon:');
  if (tee.key) out.line(`    this daemon's TEE key: ${tee.key.address} (${describeTee(tee.key)})`);
  else out.line(`    this daemon's TEE key: unavailable — ${tee.why}`);

  const model = modelToCompare(config, options.model, onChain.model);
  if (!model) {
    const ids = config.models.map((m) => m.id).join(', ');
    out.line(`  ✗ model "${onChain.model}" on chain is not one of this config's models (${ids}) — run pixeld register --model <id>`);
    return [{ field: 'model', verdict: 'differs', chain: onChain.model, local: undefined }];
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

  const compared: FieldComparison[] = [];
  for (const field of SERVICE_FIELDS) {
    if (field === 'url' && configuredUrl === undefined) {
      out.line(`  ? url: provider.service.url is not set locally (chain: ${onChain.url})`);
      compared.push({ field, verdict: 'unknown', chain: onChain.url, local: undefined });
      continue;
    }
    if (field === 'teeSignerAddress') {
      if (!tee.key) {
        out.line(`  ? teeSignerAddress: cannot compare, this daemon's TEE key is unavailable`);
        compared.push({ field, verdict: 'unknown', chain: onChain.teeSignerAddress, local: undefined });
        continue;
      }
      const same = onChain.teeSignerAddress.toLowerCase() === tee.key.address.toLowerCase();
      compared.push({ field, verdict: same ? 'match' : 'differs', chain: onChain.teeSignerAddress, local: tee.key.address });
      if (same) {
        out.line(`  ✓ teeSignerAddress is this daemon's TEE key`);
      } else {
        out.line(
          `  ✗ teeSignerAddress on chain (${onChain.teeSignerAddress}) differs from this daemon's TEE key ` +
            `(${tee.key.address}) — run pixeld register; the daemon's signatures and settlements will not verify until then`,
        );
      }
      continue;
    }
    const same = onChain[field] === local[field];
    compared.push({ field, verdict: same ? 'match' : 'differs', chain: onChain[field], local: local[field] });
    if (same) out.line(`  ✓ ${field} matches`);
    else out.line(`  ✗ ${field} differs: chain ${formatField(field, onChain[field])}, local ${formatField(field, local[field])} — run pixeld register`);
  }
  return compared;
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
        ...OUTPUT_FLAGS,
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
  return service({ configPath: values.config, model: values.model, json: values.json, quiet: values.quiet }, io);
}
