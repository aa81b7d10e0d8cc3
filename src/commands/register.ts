import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import {
  addOrUpdateService,
  AddOrUpdateServiceRejectedError,
  type ServiceParams,
} from '../chain/add-or-update-service.js';
import { chainUnavailable } from '../chain/errors.js';
import { getService, type ServingService } from '../chain/get-service.js';
import { loadProviderWallet, resolveProviderAddress } from '../chain/provider-wallet.js';
import { createChainClient } from '../chain/serving-contract.js';
import type { Config, ModelConfig } from '../config/schema.js';
import { canonicalJson } from '../tee/canonical-json.js';
import { DEV_KEY_FILE } from '../tee/dev-key.js';
import type { TeeKeyProvider, TeeMode } from '../tee/key-provider.js';
import { openTeeKeyProvider } from '../tee/open-key-provider.js';
import {
  CommandError,
  commandOutput,
  EXIT_FAILED,
  EXIT_OK,
  EXIT_USAGE,
  formatWei,
  loadCommandConfig,
  OUTPUT_FLAGS,
  OUTPUT_USAGE,
  processIo,
  reportCommandError,
  requireChainConfig,
  type CommandIo,
  type OutputOptions,
} from './command-io.js';

/**
 * `pixeld register`: publishes this daemon's service on InferenceServing (§4 of the provider protocol) —
 * shows the field-by-field change first, warns before anything that resets the owner's acknowledgement
 * of the TEE signer, and sends nothing when the chain already matches.
 *
 * Exit status: 0 done (or nothing to do, or a dry run); 1 refused, declined, or the chain failed;
 * 2 bad arguments or configuration.
 */

export const REGISTER_USAGE = `Usage: pixeld register [--model <id>] [--url <public url>] [--yes] [--dry-run] [--json] [--quiet] [--config <file>]

Registers (or updates) this provider's service on the InferenceServing contract: the model, its price
per image, the public URL, and the TEE signer address. Shows the change first; the first registration
sends the stake (provider.service.stakeWei) from the provider wallet.

  --model <id>        The model to publish (required when the config has several)
  --url <url>         Public base URL routers call (default: provider.service.url)
  --yes, -y           Do not ask before a change that resets the TEE acknowledgement
  --dry-run           Show what would be sent and send nothing
${OUTPUT_USAGE}; never asks: a reset needs --yes
                      {"provider","contract","chainId","teeSigner","teeMode","model","registered","changed":[…],
                       "resetsAcknowledgement","dryRun","sent":{"txHash","block","stakeWei"}|null,"service":{…}|null}
  -c, --config <file> Config file (default: $PIXELD_CONFIG, else config/pixeld.yaml)

Needs chain.rpcUrl, chain.chainId, chain.servingAddress and the provider wallet (env named by
provider.wallet.privateKeyEnv, default PIXELD_PROVIDER_KEY, or provider.wallet.keystoreFile).
Exit status: 0 done or nothing to do, 1 refused or failed, 2 bad arguments or configuration.
`;

export interface RegisterOptions extends OutputOptions {
  configPath?: string | undefined;
  model?: string | undefined;
  url?: string | undefined;
  yes?: boolean | undefined;
  dryRun?: boolean | undefined;
}

export interface CommandDeps {
  /** Replaces the key provider `tee.mode` names (tests inject a fake TEE). */
  tee?: TeeKeyProvider;
  /** How long to wait for the registration receipt. @default 120_000 */
  receiptTimeoutMs?: number;
}

/** What `pixeld register --json` prints. */
export interface RegisterReport {
  provider: string;
  contract: string;
  chainId: number;
  teeSigner: string;
  teeMode: TeeMode;
  model: string;
  /** Whether a service was registered before this run. */
  registered: boolean;
  /** Fields the local config changes (every field on a first registration). */
  changed: ServiceField[];
  /** Whether the change resets an acknowledged TEE signer. */
  resetsAcknowledgement: boolean;
  dryRun: boolean;
  /** The transaction, when one was sent. */
  sent: { txHash: string; block: number; stakeWei: bigint } | null;
  /** The service on chain after this run (as it was when nothing was sent); null when there is none. */
  service: ServingService | null;
}

/** Largest additionalInfo the contract takes, in bytes of UTF-8. */
export const MAX_ADDITIONAL_INFO_BYTES = 4096;

/** Fields whose change resets `teeSignerAcknowledged` (the contract's rule, §4). */
export const ATTESTED_FIELDS = ['serviceType', 'model', 'verifiability', 'additionalInfo', 'teeSignerAddress'] as const;
export const SERVICE_FIELDS = [
  'serviceType',
  'url',
  'model',
  'verifiability',
  'inputPrice',
  'outputPrice',
  'additionalInfo',
  'teeSignerAddress',
] as const satisfies ReadonlyArray<keyof ServiceParams>;
export type ServiceField = (typeof SERVICE_FIELDS)[number];

/** additionalInfo keys pixeld writes, in the order it writes them; the operator's own keys follow, sorted. */
const KNOWN_INFO_KEYS = ['TargetSeparated', 'TEEVerifier', 'VerifierURL', 'ImageName', 'ImageDigest'] as const;

// ------------------------------------------------------------------------------ the command

export async function register(options: RegisterOptions, io: CommandIo, deps: CommandDeps = {}): Promise<number> {
  try {
    return await registerUnchecked(options, io, deps);
  } catch (err) {
    if (err instanceof AddOrUpdateServiceRejectedError) return reportCommandError('register', new CommandError(err.message, EXIT_FAILED), io);
    return reportCommandError('register', err, io);
  }
}

async function registerUnchecked(options: RegisterOptions, io: CommandIo, deps: CommandDeps): Promise<number> {
  const out = commandOutput(io, options);
  const config = loadCommandConfig(options.configPath, io.env);
  const model = selectModel(config, options.model);
  const url = publicUrl(options.url ?? config.provider.service.url);
  const chainConfig = requireChainConfig(config, 'register');

  // Fresh reads: whether the service exists decides the stake, and must not be a read from before our last transaction.
  const client = createChainClient({ ...chainConfig, freshReads: true });
  try {
    out.progress('loading the provider wallet');
    const wallet = await loadProviderWallet(config.provider.wallet, io.env, client.provider);
    if (!wallet) {
      throw new CommandError(
        `no provider wallet: set env ${config.provider.wallet.privateKeyEnv} to its private key, or provider.wallet.keystoreFile ` +
          `(the wallet that owns the service and pays the stake; never the TEE key)`,
        EXIT_USAGE,
      );
    }
    const providerAddress = resolveProviderAddress(config.provider.address, wallet);
    out.progress(`opening the TEE key (tee.mode ${config.tee.mode})`);
    const tee = deps.tee ?? (await openDaemonTeeKey(config, io.env));
    const params = buildServiceParams({
      model,
      url,
      tee,
      extraInfo: config.provider.service.additionalInfo,
      env: io.env,
    });
    const infoBytes = Buffer.byteLength(params.additionalInfo, 'utf8');
    if (infoBytes > MAX_ADDITIONAL_INFO_BYTES) {
      throw new CommandError(
        `additionalInfo is ${infoBytes} bytes as JSON; the contract takes at most ${MAX_ADDITIONAL_INFO_BYTES}: ` +
          `shorten provider.service.additionalInfo`,
        EXIT_USAGE,
      );
    }

    out.line(`Provider wallet:  ${providerAddress}`);
    out.line(`Contract:         ${chainConfig.servingAddress} (chain ${chainConfig.chainId})`);
    out.line(`TEE signer:       ${tee.address} (${describeTee(tee)})`);
    if (tee.insecure) {
      out.line('Note: tee.mode is "dev": verifiability is published empty (not TeeML); nothing is attested.');
    }
    if (params.outputPrice === 0n) out.line(`Note: model ${model.id} has pricePerImageWei 0: images are free.`);
    out.line('');

    out.progress(`reading the on-chain service of ${providerAddress}`);
    const current = await getService(client, { provider: providerAddress });
    const changed = current ? changedFields(current, params) : [...SERVICE_FIELDS];
    const resetting = current ? changed.filter(isAttested) : [];
    const resetsAcknowledgement = current !== undefined && current.teeSignerAcknowledged && resetting.length > 0;
    const report = (sent: RegisterReport['sent'], service: ServingService | undefined): void =>
      out.result({
        provider: providerAddress,
        contract: chainConfig.servingAddress,
        chainId: chainConfig.chainId,
        teeSigner: tee.address,
        teeMode: tee.mode,
        model: model.id,
        registered: current !== undefined,
        changed,
        resetsAcknowledgement,
        dryRun: options.dryRun ?? false,
        sent,
        service: service ?? null,
      } satisfies RegisterReport);
    if (current) {
      out.line(`On-chain service of ${providerAddress} → local config:`);
      for (const line of diffLines(current, params)) out.line(line);
    } else {
      out.line(`No service is registered for ${providerAddress} yet; this registers:`);
      for (const field of SERVICE_FIELDS) out.line(fieldLine('+', field, formatField(field, params[field])));
    }
    out.line('');

    if (current && changed.length === 0) {
      out.line('No change: the on-chain service already matches the local config. Nothing sent.');
      if (!current.teeSignerAcknowledged) out.line(unacknowledgedNote(current.teeSignerAddress));
      report(null, current);
      return EXIT_OK;
    }

    const stakeWei = config.provider.service.stakeWei;
    if (!current) {
      out.line(`First registration: the stake of ${formatWei(stakeWei)} will be sent from the provider wallet with the transaction.`);
      out.progress('reading the provider wallet\'s balance');
      const balance = await readBalance(client.provider, providerAddress);
      if (balance < stakeWei) {
        const message = `the provider wallet holds ${formatWei(balance)}; the first registration needs the stake of ${formatWei(stakeWei)} plus gas`;
        if (!options.dryRun) throw new CommandError(message, EXIT_FAILED);
        out.line(`Warning: ${message}.`);
      }
    }

    if (current && resetting.length > 0) {
      if (current.teeSignerAcknowledged) {
        for (const line of resetWarning(resetting)) out.line(line);
        if (verifierUrlOf(current.additionalInfo) !== verifierUrlOf(params.additionalInfo) && changed.includes('url')) {
          out.line('         additionalInfo changes because its VerifierURL follows the url. To move the url without a reset,');
          out.line('         pin VerifierURL in provider.service.additionalInfo (it must still serve the attestation report).');
        }
      } else {
        out.line(`Note: the TEE signer is not acknowledged now; after this update the contract owner must acknowledge it.`);
      }
    }

    if (options.dryRun) {
      out.line('Dry run: nothing sent.');
      report(null, current);
      return EXIT_OK;
    }

    if (resetsAcknowledgement && !options.yes) {
      // --json keeps stdout for its object: no question is asked there.
      if (options.json || !io.isTTY || !io.stdin) {
        io.stderr('pixeld register: refusing to reset the TEE acknowledgement without confirmation: run it on a terminal without --json, or pass --yes');
        return EXIT_FAILED;
      }
      if (!(await confirm(io, 'Send this update and reset the TEE acknowledgement? [y/N]'))) {
        io.stderr('pixeld register: not confirmed; nothing sent');
        return EXIT_FAILED;
      }
    }

    out.progress(current ? 'sending addOrUpdateService' : `sending addOrUpdateService with the stake of ${formatWei(stakeWei)}`);
    const sent = await addOrUpdateService(client, {
      signer: wallet,
      service: params,
      stakeWei,
      ...(deps.receiptTimeoutMs !== undefined ? { receiptTimeoutMs: deps.receiptTimeoutMs } : {}),
      onSent: (hash) => out.progress(`sent tx ${hash}; waiting for its receipt`),
    });
    out.progress(`tx ${sent.hash} mined in block ${sent.blockNumber}; reading the service back`);
    out.line(
      `Sent addOrUpdateService: tx ${sent.hash} (block ${sent.blockNumber})` +
        (sent.firstRegistration ? `, stake ${formatWei(sent.valueWei)}` : ''),
    );
    const after = await getService(client, { provider: providerAddress, blockTag: sent.blockNumber });
    if (!after) throw new CommandError(`the service of ${providerAddress} is missing on chain after tx ${sent.hash}`, EXIT_FAILED);
    report({ txHash: sent.hash, block: sent.blockNumber, stakeWei: sent.valueWei }, after);
    out.line('');
    out.line('On-chain service now:');
    for (const line of serviceLines(after)) out.line(line);
    if (!after.teeSignerAcknowledged) {
      out.line('');
      out.line(unacknowledgedNote(after.teeSignerAddress));
    }
    return EXIT_OK;
  } finally {
    client.close();
  }
}

// ------------------------------------------------------------------------- what is published

export interface BuildServiceParamsInput {
  model: ModelConfig;
  /** Public base URL, without a trailing slash. */
  url: string;
  tee: Pick<TeeKeyProvider, 'mode' | 'insecure' | 'address'>;
  /** provider.service.additionalInfo: merged over pixeld's own keys. */
  extraInfo: Readonly<Record<string, unknown>>;
  /** PIXELD_IMAGE_NAME / PIXELD_IMAGE_DIGEST, when set, go into additionalInfo. */
  env: NodeJS.ProcessEnv;
}

/** ServiceParams for one model: the same config always gives the same params, byte for byte. */
export function buildServiceParams(input: BuildServiceParamsInput): ServiceParams {
  return {
    serviceType: input.model.capabilities.includes('generation') ? 'text-to-image' : 'image-editing',
    url: input.url,
    model: input.model.id,
    verifiability: input.tee.insecure ? '' : 'TeeML',
    inputPrice: 0n,
    outputPrice: input.model.pricePerImageWei,
    additionalInfo: buildAdditionalInfo(input),
    teeSignerAddress: input.tee.address,
  };
}

/**
 * The additionalInfo JSON: pixeld's keys in a fixed order, then the operator's other keys sorted, every
 * nested object with sorted keys. Any change of these bytes resets the TEE acknowledgement, so the
 * order never depends on how the config file happens to list them.
 */
export function buildAdditionalInfo(input: Omit<BuildServiceParamsInput, 'model'>): string {
  const info: Record<string, unknown> = { TargetSeparated: false };
  if (!input.tee.insecure) info.TEEVerifier = teeVerifierOf(input.tee.mode);
  info.VerifierURL = `${input.url}/v1/attestation/report`;
  if (input.env.PIXELD_IMAGE_NAME) info.ImageName = input.env.PIXELD_IMAGE_NAME;
  if (input.env.PIXELD_IMAGE_DIGEST) info.ImageDigest = input.env.PIXELD_IMAGE_DIGEST;
  Object.assign(info, input.extraInfo);

  const known = KNOWN_INFO_KEYS.filter((k) => Object.hasOwn(info, k) && info[k] !== undefined);
  const others = Object.keys(info)
    .filter((k) => !(KNOWN_INFO_KEYS as readonly string[]).includes(k) && info[k] !== undefined)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  try {
    return `{${[...known, ...others].map((k) => `${JSON.stringify(k)}:${canonicalJson(info[k])}`).join(',')}}`;
  } catch (err) {
    throw new CommandError(`config: provider.service.additionalInfo: ${(err as Error).message}`, EXIT_USAGE);
  }
}

function teeVerifierOf(mode: TeeMode): string {
  // Only dstack and tdx reach here (dev is insecure); a new TEE names itself the same way.
  return mode;
}

/** The model named by --model, else the only one configured. */
export function selectModel(config: Readonly<Config>, id: string | undefined): ModelConfig {
  const ids = config.models.map((m) => m.id);
  if (id !== undefined) {
    const model = config.models.find((m) => m.id === id);
    if (!model) throw new CommandError(`--model ${id}: not a configured model (configured: ${ids.join(', ')})`, EXIT_USAGE);
    return model;
  }
  if (config.models.length === 1) return config.models[0]!;
  throw new CommandError(
    `several models are configured (${ids.join(', ')}): choose the one to publish with --model (one service per provider wallet)`,
    EXIT_USAGE,
  );
}

/** Validates the public URL and drops trailing slashes (clients append /v1/... to it). */
export function publicUrl(url: string | undefined): string {
  if (url === undefined || url === '') {
    throw new CommandError(
      'no public URL: pass --url https://… or set provider.service.url (the base URL routers and users call)',
      EXIT_USAGE,
    );
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new CommandError(`--url / provider.service.url: "${url}" is not a URL`, EXIT_USAGE);
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') {
    throw new CommandError(`--url / provider.service.url: "${url}" must be http(s)`, EXIT_USAGE);
  }
  if (parsed.username !== '' || parsed.password !== '') {
    throw new CommandError('--url / provider.service.url: must not carry credentials (it is published on chain)', EXIT_USAGE);
  }
  return url.replace(/\/+$/, '');
}

// ------------------------------------------------------------------ shared by register and service

/** The TEE key exactly as `pixeld serve` opens it (the dev key is made in the data dir if missing). */
export async function openDaemonTeeKey(config: Readonly<Config>, env: NodeJS.ProcessEnv): Promise<TeeKeyProvider> {
  mkdirSync(config.dataDir, { recursive: true });
  return openTeeKeyProvider({ tee: config.tee, dataDir: config.dataDir, nodeEnv: env.NODE_ENV });
}

/** The dev key file, which `pixeld service` reads only when the daemon has made it. */
export function devKeyExists(config: Readonly<Config>): boolean {
  return existsSync(path.join(config.dataDir, DEV_KEY_FILE));
}

export function describeTee(tee: Pick<TeeKeyProvider, 'mode' | 'insecure' | 'keySource'>): string {
  return tee.insecure ? `${tee.mode}, INSECURE: not in a TEE, nothing attested` : `${tee.mode}, key from ${tee.keySource}`;
}

function isAttested(field: ServiceField): field is (typeof ATTESTED_FIELDS)[number] {
  return (ATTESTED_FIELDS as readonly string[]).includes(field);
}

function sameValue(field: ServiceField, a: string | bigint, b: string | bigint): boolean {
  if (field === 'teeSignerAddress') return String(a).toLowerCase() === String(b).toLowerCase();
  return a === b;
}

export function changedFields(current: ServingService, params: ServiceParams): ServiceField[] {
  return SERVICE_FIELDS.filter((f) => !sameValue(f, current[f], params[f]));
}

function diffLines(current: ServingService, params: ServiceParams): string[] {
  const lines: string[] = [];
  for (const field of SERVICE_FIELDS) {
    const before = formatField(field, current[field]);
    if (sameValue(field, current[field], params[field])) {
      lines.push(fieldLine(' ', field, `${before} (unchanged)`));
      continue;
    }
    const after = formatField(field, params[field]);
    const mark = isAttested(field) ? '!' : '~';
    if (before.length + after.length > 90) {
      lines.push(fieldLine(mark, field, ''));
      lines.push(`      old: ${before}`);
      lines.push(`      new: ${after}`);
    } else {
      lines.push(fieldLine(mark, field, `${before} → ${after}`));
    }
  }
  if (changedFields(current, params).length > 0) lines.push('  (~ changes in place; ! resets the TEE acknowledgement)');
  return lines;
}

function resetWarning(fields: readonly string[]): string[] {
  return [
    `WARNING: changing ${fields.join(', ')} resets the TEE signer acknowledgement (teeSignerAcknowledged → false).`,
    '         Only the contract owner can restore it (acknowledgeTEESignerByOwner). Until then every settlement',
    '         fails with NO_TEE_SIGNER and no fees can be collected. Price and url changes do not reset it.',
  ];
}

function verifierUrlOf(additionalInfo: string): unknown {
  try {
    return (JSON.parse(additionalInfo) as Record<string, unknown> | null)?.VerifierURL;
  } catch {
    return undefined;
  }
}

export function unacknowledgedNote(signer: string): string {
  return (
    `teeSignerAcknowledged is false: settlements fail with NO_TEE_SIGNER until the contract owner ` +
    `acknowledges TEE signer ${signer} (acknowledgeTEESignerByOwner).`
  );
}

/** Every field of an on-chain service, one line each. */
export function serviceLines(service: ServingService): string[] {
  return [
    fieldLine(' ', 'provider', service.provider),
    ...SERVICE_FIELDS.map((f) => fieldLine(' ', f, formatField(f, service[f]))),
    fieldLine(' ', 'teeSignerAcknowledged', String(service.teeSignerAcknowledged)),
    fieldLine(' ', 'updatedAt', `${service.updatedAt} (${new Date(Number(service.updatedAt) * 1000).toISOString()})`),
  ];
}

export function formatField(field: ServiceField, value: string | bigint): string {
  if (field === 'inputPrice') return formatWei(value as bigint);
  if (field === 'outputPrice') return `${formatWei(value as bigint)} per image`;
  if (field === 'teeSignerAddress') return String(value);
  // Already JSON: shown as is, so its keys read plainly.
  if (field === 'additionalInfo' && value !== '') return String(value);
  return JSON.stringify(value);
}

function fieldLine(mark: string, field: string, text: string): string {
  return `  ${mark} ${field.padEnd(22)} ${text}`.trimEnd();
}

async function readBalance(provider: { getBalance(address: string): Promise<bigint> }, address: string): Promise<bigint> {
  try {
    return await provider.getBalance(address);
  } catch (err) {
    throw chainUnavailable('getBalance', err);
  }
}

/** Asks on stdout, reads one line from stdin; only y / yes confirms. */
async function confirm(io: CommandIo, question: string): Promise<boolean> {
  io.stdout(question);
  const rl = createInterface({ input: io.stdin!, terminal: false });
  try {
    const answer = await new Promise<string | undefined>((resolve) => {
      rl.once('line', resolve);
      rl.once('close', () => resolve(undefined));
    });
    return answer !== undefined && /^\s*y(es)?\s*$/i.test(answer);
  } finally {
    rl.close();
  }
}

/** `pixeld register …` from the command line. */
export async function runRegisterCli(argv: string[], io: CommandIo = processIo()): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      options: {
        config: { type: 'string', short: 'c' },
        model: { type: 'string' },
        url: { type: 'string' },
        yes: { type: 'boolean', short: 'y' },
        'dry-run': { type: 'boolean' },
        ...OUTPUT_FLAGS,
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    io.stderr(`pixeld register: ${(err as Error).message}\n\n${REGISTER_USAGE}`);
    return EXIT_USAGE;
  }
  if (values.help) {
    io.stdout(REGISTER_USAGE);
    return EXIT_OK;
  }
  return register(
    {
      configPath: values.config,
      model: values.model,
      url: values.url,
      yes: values.yes,
      dryRun: values['dry-run'],
      json: values.json,
      quiet: values.quiet,
    },
    io,
  );
}
