/**
 * `pixeld register` and `pixeld service` against pixeld's InferenceServing on a real anvil node
 * (test/chain/anvil.ts). Every read-back goes through the chain, never through the command's output.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Wallet, parseEther } from 'ethers';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { getService, type ServingService } from '../../src/chain/get-service.js';
import { createChainClient } from '../../src/chain/serving-contract.js';
import type { CommandIo } from '../../src/commands/command-io.js';
import { register, type CommandDeps, type RegisterOptions } from '../../src/commands/register.js';
import { service } from '../../src/commands/service.js';
import { openDevKeyProvider } from '../../src/tee/dev-key.js';
import type { TeeKeyProvider } from '../../src/tee/key-provider.js';
import { acknowledgeService, deployInferenceServing, startAnvil, type Anvil, type Deployment } from '../chain/anvil.js';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const URL_A = 'https://pixeld.example.com';
const PRICE_WEI = 2_000_000_000_000_000n; // 0.002 0G per image

let chain: Anvil;
let deployment: Deployment;
let owner: Wallet;
let provider: Wallet;

beforeAll(async () => {
  chain = await startAnvil();
  [owner, provider] = chain.wallets as [Wallet, Wallet];
  deployment = await deployInferenceServing(owner);
});

afterAll(async () => {
  await chain?.stop();
});

let snapshot = '';
beforeEach(async () => {
  snapshot = await chain.snapshot();
});
afterEach(async () => {
  await chain.revert(snapshot);
});

// ------------------------------------------------------------------------------------ helpers

interface ModelInput {
  id: string;
  capabilities?: Array<'generation' | 'edit'>;
  pricePerImageWei?: bigint;
}

interface ConfigOptions {
  dataDir?: string;
  models?: ModelInput[];
  url?: string | null;
  stakeWei?: bigint;
  additionalInfo?: Record<string, unknown>;
  /** Replaces the chain section; null drops it. */
  chain?: Record<string, unknown> | null;
  providerAddress?: string;
}

/** Writes a config file (JSON) and returns its path; the data dir is fresh unless given. */
function writeConfig(options: ConfigOptions = {}): { file: string; dataDir: string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'pixeld-register-'));
  const dataDir = options.dataDir ?? path.join(dir, 'data');
  const models = options.models ?? [{ id: 'acme/flux-1' }];
  const serviceSection: Record<string, unknown> = { additionalInfo: options.additionalInfo ?? { ProviderName: 'Acme' } };
  if (options.url !== null) serviceSection.url = options.url ?? URL_A;
  if (options.stakeWei !== undefined) serviceSection.stakeWei = options.stakeWei.toString();
  const config: Record<string, unknown> = {
    dataDir,
    provider: {
      ...(options.providerAddress ? { address: options.providerAddress } : {}),
      service: serviceSection,
    },
    backends: [{ id: 'reference', type: 'reference' }],
    models: models.map((m) => ({
      id: m.id,
      backend: 'reference',
      capabilities: m.capabilities ?? ['generation', 'edit'],
      sizes: ['1024x1024'],
      pricePerImageWei: (m.pricePerImageWei ?? PRICE_WEI).toString(),
    })),
  };
  if (options.chain !== null) {
    config.chain = options.chain ?? { rpcUrl: chain.rpcUrl, chainId: chain.chainId, servingAddress: deployment.address };
  }
  const file = path.join(dir, 'pixeld.json');
  writeFileSync(file, JSON.stringify(config, null, 2));
  return { file, dataDir };
}

interface Captured {
  io: CommandIo;
  out: string[];
  err: string[];
  text(): string;
}

function capture(overrides: Partial<CommandIo> = {}): Captured {
  const out: string[] = [];
  const err: string[] = [];
  return {
    io: {
      stdout: (line) => out.push(line),
      stderr: (line) => err.push(line),
      isTTY: false,
      env: { PIXELD_PROVIDER_KEY: provider.privateKey },
      ...overrides,
    },
    out,
    err,
    text: () => [...out, ...err].join('\n'),
  };
}

/** Runs register and checks that nothing it printed holds the provider's private key. */
async function runRegister(options: RegisterOptions, overrides: Partial<CommandIo> = {}, deps: CommandDeps = {}) {
  const c = capture(overrides);
  const code = await register(options, c.io, deps);
  expect(c.text()).not.toContain(provider.privateKey.slice(2));
  return { code, ...c };
}

/** A TEE key provider as a real TEE would give one (not insecure), on a fresh random key. */
function fakeTee(mode: 'dstack' | 'tdx' = 'dstack'): TeeKeyProvider {
  const wallet = Wallet.createRandom();
  return {
    mode,
    teeLabel: mode,
    insecure: false,
    keySource: 'test-fake',
    address: wallet.address,
    signer: wallet,
    journalDir: '/nonexistent',
    signatureChain: [],
    info: async () => undefined,
    quote: async () => undefined,
  };
}

async function readService(address = provider.address): Promise<ServingService | undefined> {
  const client = createChainClient({ rpcUrl: chain.rpcUrl, chainId: chain.chainId, servingAddress: deployment.address, rpcTimeoutMs: 5_000 });
  try {
    return await getService(client, { provider: address });
  } finally {
    client.close();
  }
}

const nonceOf = (address: string) => chain.provider.getTransactionCount(address, 'latest');

/** Registers with `tee` and has the owner acknowledge the signer. */
async function registerAcknowledged(file: string, tee: TeeKeyProvider): Promise<ServingService> {
  const first = await runRegister({ configPath: file }, {}, { tee });
  expect(first.code, first.text()).toBe(0);
  await acknowledgeService(deployment.contract, owner, provider.address);
  const registered = await readService();
  expect(registered?.teeSignerAcknowledged).toBe(true);
  return registered!;
}

// --------------------------------------------------------------------------- first registration

describe('pixeld register: first registration', () => {
  it('sends the configured stake and publishes every field (dev mode: verifiability empty, no TEEVerifier)', async () => {
    const stakeWei = parseEther('150');
    const { file, dataDir } = writeConfig({ stakeWei });
    expect(await readService()).toBeUndefined();
    const contractBefore = await chain.provider.getBalance(deployment.address);

    const run = await runRegister({ configPath: file });

    expect(run.code, run.text()).toBe(0);
    expect(await chain.provider.getBalance(deployment.address)).toBe(contractBefore + stakeWei);
    const devKey = openDevKeyProvider({ dataDir, nodeEnv: undefined, allowInProduction: false });
    const onChain = await readService();
    expect(onChain).toMatchObject({
      provider: provider.address,
      serviceType: 'text-to-image',
      url: URL_A,
      model: 'acme/flux-1',
      verifiability: '',
      inputPrice: 0n,
      outputPrice: PRICE_WEI,
      additionalInfo: '{"TargetSeparated":false,"VerifierURL":"https://pixeld.example.com/v1/attestation/report","ProviderName":"Acme"}',
      teeSignerAddress: devKey.address,
      teeSignerAcknowledged: false,
    });
    expect(run.text()).toContain('First registration: the stake of 150000000000000000000 wei (150.0 0G) will be sent');
    expect(run.text()).toMatch(/Sent addOrUpdateService: tx 0x[0-9a-f]{64} \(block \d+\), stake 150000000000000000000 wei/);
    expect(run.text()).toContain('settlements fail with NO_TEE_SIGNER until the contract owner acknowledges');
    // The state printed after sending is the chain's: the new price is shown.
    expect(run.out.slice(run.out.indexOf('On-chain service now:')).join('\n')).toContain('2000000000000000 wei (0.002 0G) per image');
  });

  it('--json: one object with the change, the transaction and the service now; each step on stderr in order', async () => {
    const tee = fakeTee();
    const { file } = writeConfig({ stakeWei: parseEther('150') });
    const run = await runRegister({ configPath: file, json: true }, {}, { tee });

    expect(run.code, run.text()).toBe(0);
    expect(run.out).toHaveLength(1);
    const report = JSON.parse(run.out[0]!) as Record<string, any>;
    const onChain = (await readService())!;
    const mined = (await chain.provider.getTransactionReceipt(report.sent.txHash))!;
    expect(report).toEqual({
      provider: provider.address,
      contract: deployment.address,
      chainId: chain.chainId,
      teeSigner: tee.address,
      teeMode: 'dstack',
      model: 'acme/flux-1',
      registered: false,
      changed: ['serviceType', 'url', 'model', 'verifiability', 'inputPrice', 'outputPrice', 'additionalInfo', 'teeSignerAddress'],
      resetsAcknowledgement: false,
      dryRun: false,
      sent: { txHash: mined.hash, block: mined.blockNumber, stakeWei: parseEther('150').toString() },
      service: {
        provider: provider.address,
        serviceType: 'text-to-image',
        url: URL_A,
        model: 'acme/flux-1',
        verifiability: 'TeeML',
        inputPrice: '0',
        outputPrice: PRICE_WEI.toString(),
        additionalInfo: onChain.additionalInfo,
        teeSignerAddress: tee.address,
        teeSignerAcknowledged: false,
        updatedAt: onChain.updatedAt.toString(),
      },
    });
    expect(run.err).toEqual([
      '… loading the provider wallet',
      '… opening the TEE key (tee.mode dev)',
      `… reading the on-chain service of ${provider.address}`,
      "… reading the provider wallet's balance",
      '… sending addOrUpdateService with the stake of 150000000000000000000 wei (150.0 0G)',
      `… sent tx ${mined.hash}; waiting for its receipt`,
      `… tx ${mined.hash} mined in block ${mined.blockNumber}; reading the service back`,
    ]);

    const again = await runRegister({ configPath: file, json: true, quiet: true }, {}, { tee });
    expect(again.code).toBe(0);
    expect(again.err).toEqual([]);
    expect(JSON.parse(again.out.join(''))).toMatchObject({ registered: true, changed: [], sent: null, service: { model: 'acme/flux-1' } });
  });

  it('publishes TeeML, the TEE verifier and the image from the environment with a real TEE key', async () => {
    const tee = fakeTee('dstack');
    const { file } = writeConfig({ additionalInfo: { ProviderName: 'Acme', Country: 'DE' } });
    const env = {
      PIXELD_PROVIDER_KEY: provider.privateKey,
      PIXELD_IMAGE_NAME: 'ghcr.io/acme/pixeld:1.2.3',
      PIXELD_IMAGE_DIGEST: 'sha256:0123456789abcdef',
    };

    const run = await runRegister({ configPath: file }, { env }, { tee });

    expect(run.code, run.text()).toBe(0);
    const onChain = await readService();
    expect(onChain?.verifiability).toBe('TeeML');
    expect(onChain?.teeSignerAddress).toBe(tee.address);
    // pixeld's keys in a fixed order, then the operator's sorted.
    expect(onChain?.additionalInfo).toBe(
      '{"TargetSeparated":false,"TEEVerifier":"dstack","VerifierURL":"https://pixeld.example.com/v1/attestation/report",' +
        '"ImageName":"ghcr.io/acme/pixeld:1.2.3","ImageDigest":"sha256:0123456789abcdef","Country":"DE","ProviderName":"Acme"}',
    );
  });

  it('registers the model chosen with --model; an edit-only model as image-editing, at its own price; --url wins', async () => {
    const { file } = writeConfig({
      models: [{ id: 'acme/flux-1' }, { id: 'acme/inpaint', capabilities: ['edit'], pricePerImageWei: 7n }],
    });
    const ambiguous = await runRegister({ configPath: file });
    expect(ambiguous.code).toBe(2);
    expect(ambiguous.err.join('\n')).toContain('several models are configured (acme/flux-1, acme/inpaint)');

    const run = await runRegister({ configPath: file, model: 'acme/inpaint', url: 'https://edit.example.com/' });

    expect(run.code, run.text()).toBe(0);
    const onChain = await readService();
    expect(onChain).toMatchObject({ serviceType: 'image-editing', model: 'acme/inpaint', outputPrice: 7n, url: 'https://edit.example.com' });
    expect(JSON.parse(onChain!.additionalInfo)).toMatchObject({ VerifierURL: 'https://edit.example.com/v1/attestation/report' });
  });

  it('--dry-run prints the registration and the stake and sends nothing', async () => {
    const { file } = writeConfig();
    const nonce = await nonceOf(provider.address);

    const run = await runRegister({ configPath: file, dryRun: true });

    expect(run.code, run.text()).toBe(0);
    expect(run.text()).toContain('No service is registered for');
    expect(run.text()).toContain('the stake of 100000000000000000000 wei (100.0 0G) will be sent');
    expect(run.text()).toContain('Dry run: nothing sent.');
    expect(await readService()).toBeUndefined();
    expect(await nonceOf(provider.address)).toBe(nonce);
  });

  it('refuses additionalInfo over 4096 bytes before sending anything', async () => {
    const { file } = writeConfig({ additionalInfo: { Description: 'x'.repeat(4100) } });

    const run = await runRegister({ configPath: file });

    expect(run.code).toBe(2);
    expect(run.err.join('\n')).toMatch(/additionalInfo is \d+ bytes as JSON; the contract takes at most 4096/);
    expect(await readService()).toBeUndefined();
  });
});

// ----------------------------------------------------------------------------------- updates

describe('pixeld register: updates', () => {
  it('re-running with the same config sends nothing, even with the operator keys listed in another order', async () => {
    const tee = fakeTee();
    const first = writeConfig({ additionalInfo: { ProviderName: 'Acme', Country: 'DE' } });
    expect((await runRegister({ configPath: first.file }, {}, { tee })).code).toBe(0);
    const before = await readService();
    const nonce = await nonceOf(provider.address);
    const block = await chain.provider.getBlockNumber();

    const reordered = writeConfig({ dataDir: first.dataDir, additionalInfo: { Country: 'DE', ProviderName: 'Acme' } });
    const run = await runRegister({ configPath: reordered.file }, {}, { tee });

    expect(run.code, run.text()).toBe(0);
    expect(run.text()).toContain('No change: the on-chain service already matches the local config. Nothing sent.');
    expect(await nonceOf(provider.address)).toBe(nonce);
    expect(await chain.provider.getBlockNumber()).toBe(block);
    expect(await readService()).toEqual(before);
  });

  it('re-running in dev mode with the same data dir keeps the dev key and sends nothing', async () => {
    const { file } = writeConfig();
    expect((await runRegister({ configPath: file })).code).toBe(0);
    const nonce = await nonceOf(provider.address);

    const run = await runRegister({ configPath: file });

    expect(run.code, run.text()).toBe(0);
    expect(run.text()).toContain('No change');
    expect(await nonceOf(provider.address)).toBe(nonce);
  });

  it('a price change updates in place with no warning and no stake, and the acknowledgement stays', async () => {
    const tee = fakeTee();
    const first = writeConfig();
    await registerAcknowledged(first.file, tee);
    const contractBalance = await chain.provider.getBalance(deployment.address);

    const cheaper = writeConfig({ dataDir: first.dataDir, models: [{ id: 'acme/flux-1', pricePerImageWei: 1_000n }] });
    const run = await runRegister({ configPath: cheaper.file }, {}, { tee });

    expect(run.code, run.text()).toBe(0);
    expect(run.text()).not.toContain('WARNING');
    expect(run.text()).toContain('outputPrice');
    expect(run.text()).toMatch(/~ outputPrice\s+2000000000000000 wei \(0\.002 0G\) per image → 1000 wei/);
    const onChain = await readService();
    expect(onChain?.outputPrice).toBe(1_000n);
    expect(onChain?.teeSignerAcknowledged).toBe(true);
    expect(await chain.provider.getBalance(deployment.address)).toBe(contractBalance);
  });

  it('a url change with VerifierURL pinned in provider.service.additionalInfo updates in place and keeps the acknowledgement', async () => {
    const tee = fakeTee();
    const pinned = { VerifierURL: 'https://verify.example.com/v1/attestation/report' };
    const first = writeConfig({ additionalInfo: pinned });
    await registerAcknowledged(first.file, tee);

    const moved = writeConfig({ dataDir: first.dataDir, additionalInfo: pinned, url: 'https://pixeld-2.example.com' });
    const run = await runRegister({ configPath: moved.file }, {}, { tee });

    expect(run.code, run.text()).toBe(0);
    expect(run.text()).not.toContain('WARNING');
    const onChain = await readService();
    expect(onChain?.url).toBe('https://pixeld-2.example.com');
    expect(onChain?.teeSignerAcknowledged).toBe(true);
  });

  it('a url change moves the derived VerifierURL, so it warns and says how to avoid the reset', async () => {
    const tee = fakeTee();
    const first = writeConfig();
    await registerAcknowledged(first.file, tee);

    const moved = writeConfig({ dataDir: first.dataDir, url: 'https://pixeld-2.example.com' });
    const run = await runRegister({ configPath: moved.file }, {}, { tee });

    expect(run.code).toBe(1);
    expect(run.text()).toContain('WARNING: changing additionalInfo resets the TEE signer acknowledgement');
    expect(run.text()).toContain('pin VerifierURL in provider.service.additionalInfo');
    expect((await readService())?.url).toBe(URL_A);
  });

  const resetCases: Array<{ name: string; field: string; change: (dataDir: string, tee: TeeKeyProvider) => { file: string; tee: TeeKeyProvider }; check: (s: ServingService, tee: TeeKeyProvider) => void }> = [
    {
      name: 'model',
      field: 'model',
      change: (dataDir, tee) => ({ file: writeConfig({ dataDir, models: [{ id: 'acme/flux-2' }] }).file, tee }),
      check: (s) => expect(s.model).toBe('acme/flux-2'),
    },
    {
      name: 'TEE signer',
      field: 'teeSignerAddress',
      change: (dataDir) => ({ file: writeConfig({ dataDir }).file, tee: fakeTee() }),
      check: (s, tee) => expect(s.teeSignerAddress).toBe(tee.address),
    },
    {
      name: 'additionalInfo',
      field: 'additionalInfo',
      change: (dataDir, tee) => ({ file: writeConfig({ dataDir, additionalInfo: { ProviderName: 'Acme GmbH' } }).file, tee }),
      check: (s) => expect(JSON.parse(s.additionalInfo)).toMatchObject({ ProviderName: 'Acme GmbH' }),
    },
  ];

  it.each(resetCases)('a $name change warns, refuses without --yes and a TTY, and with --yes resets the acknowledgement', async ({ field, change, check }) => {
    const tee = fakeTee();
    const first = writeConfig();
    const registered = await registerAcknowledged(first.file, tee);
    const next = change(first.dataDir, tee);
    const nonce = await nonceOf(provider.address);

    const refused = await runRegister({ configPath: next.file }, {}, { tee: next.tee });

    expect(refused.code).toBe(1);
    expect(refused.text()).toContain(`WARNING: changing ${field} resets the TEE signer acknowledgement`);
    expect(refused.text()).toContain('Only the contract owner can restore it');
    expect(refused.text()).toContain('NO_TEE_SIGNER');
    expect(refused.err.join('\n')).toContain('refusing to reset the TEE acknowledgement without confirmation');
    expect(await nonceOf(provider.address)).toBe(nonce);
    expect(await readService()).toEqual(registered);

    const confirmed = await runRegister({ configPath: next.file, yes: true }, {}, { tee: next.tee });

    expect(confirmed.code, confirmed.text()).toBe(0);
    const onChain = await readService();
    check(onChain!, next.tee);
    expect(onChain?.teeSignerAcknowledged).toBe(false);
    expect(confirmed.text()).toContain('teeSignerAcknowledged is false: settlements fail with NO_TEE_SIGNER');
  });

  it('on a terminal it asks: "n" sends nothing, "y" sends', async () => {
    const tee = fakeTee();
    const first = writeConfig();
    await registerAcknowledged(first.file, tee);
    const next = writeConfig({ dataDir: first.dataDir, models: [{ id: 'acme/flux-2' }] });

    const declined = await runRegister({ configPath: next.file }, { isTTY: true, stdin: Readable.from(['n\n']) }, { tee });
    expect(declined.code).toBe(1);
    expect(declined.out.join('\n')).toContain('[y/N]');
    expect((await readService())?.model).toBe('acme/flux-1');

    const eof = await runRegister({ configPath: next.file }, { isTTY: true, stdin: Readable.from([]) }, { tee });
    expect(eof.code).toBe(1);
    expect((await readService())?.model).toBe('acme/flux-1');

    const accepted = await runRegister({ configPath: next.file }, { isTTY: true, stdin: Readable.from(['y\n']) }, { tee });
    expect(accepted.code, accepted.text()).toBe(0);
    expect(await readService()).toMatchObject({ model: 'acme/flux-2', teeSignerAcknowledged: false });
  });

  it('--json never asks: a reset is refused without --yes, even on a terminal, and sent with it', async () => {
    const tee = fakeTee();
    const first = writeConfig();
    await registerAcknowledged(first.file, tee);
    const next = writeConfig({ dataDir: first.dataDir, models: [{ id: 'acme/flux-2' }] });

    const refused = await runRegister({ configPath: next.file, json: true }, { isTTY: true, stdin: Readable.from(['y\n']) }, { tee });
    expect(refused.code).toBe(1);
    expect(refused.out).toEqual([]);
    expect(refused.err.at(-1)).toContain('refusing to reset the TEE acknowledgement without confirmation');
    expect((await readService())?.model).toBe('acme/flux-1');

    const sent = await runRegister({ configPath: next.file, json: true, yes: true }, {}, { tee });
    expect(sent.code, sent.text()).toBe(0);
    expect(JSON.parse(sent.out.join(''))).toMatchObject({
      registered: true,
      changed: ['model'],
      resetsAcknowledgement: true,
      sent: { txHash: expect.stringMatching(/^0x[0-9a-f]{64}$/) },
      service: { model: 'acme/flux-2', teeSignerAcknowledged: false },
    });
  });

  it('--dry-run shows the reset warning but neither asks nor sends', async () => {
    const tee = fakeTee();
    const first = writeConfig();
    const registered = await registerAcknowledged(first.file, tee);
    const next = writeConfig({ dataDir: first.dataDir, models: [{ id: 'acme/flux-2' }] });

    const run = await runRegister({ configPath: next.file, dryRun: true }, {}, { tee });

    expect(run.code, run.text()).toBe(0);
    expect(run.text()).toContain('WARNING: changing model resets');
    expect(run.text()).toMatch(/! model\s+"acme\/flux-1" → "acme\/flux-2"/);
    expect(run.text()).toContain('Dry run: nothing sent.');
    expect(await readService()).toEqual(registered);
  });
});

// ------------------------------------------------------------------------------ what is missing

describe('pixeld register: configuration errors', () => {
  it('without a provider wallet it names the env var to set', async () => {
    const { file } = writeConfig();
    const run = await runRegister({ configPath: file }, { env: {} });
    expect(run.code).toBe(2);
    expect(run.err.join('\n')).toContain('no provider wallet: set env PIXELD_PROVIDER_KEY');
  });

  it('without chain settings it names each missing key', async () => {
    const none = await runRegister({ configPath: writeConfig({ chain: null }).file });
    expect(none.code).toBe(2);
    expect(none.err.join('\n')).toContain('config: chain.rpcUrl, chain.chainId, chain.servingAddress are required for pixeld register');

    const partial = await runRegister({ configPath: writeConfig({ chain: { rpcUrl: chain.rpcUrl, chainId: chain.chainId } }).file });
    expect(partial.code).toBe(2);
    expect(partial.err.join('\n')).toContain('config: chain.servingAddress is required for pixeld register');
  });

  it('without a public url it says where to set one', async () => {
    const run = await runRegister({ configPath: writeConfig({ url: null }).file });
    expect(run.code).toBe(2);
    expect(run.err.join('\n')).toContain('no public URL: pass --url');
  });

  it('a chain that cannot be reached is chain_unavailable, exit 1', async () => {
    const port = await closedPort();
    const { file } = writeConfig({
      chain: { rpcUrl: `http://127.0.0.1:${port}`, chainId: chain.chainId, servingAddress: deployment.address, rpcTimeoutMs: 1_000 },
    });
    const run = await runRegister({ configPath: file }, {}, { tee: fakeTee() });
    expect(run.code).toBe(1);
    expect(run.err.join('\n')).toContain('the chain could not be read (serviceExists)');
  });
});

// ------------------------------------------------------------------------------ pixeld service

describe('pixeld service', () => {
  it('says when the provider is not registered, exit 1', async () => {
    const c = capture();
    const code = await service({ configPath: writeConfig().file }, c.io, { tee: fakeTee() });
    expect(code).toBe(1);
    expect(c.text()).toContain(`No service is registered for provider ${provider.address}`);
  });

  it('prints every field, prices in wei and 0G, the acknowledgement, and that the config matches', async () => {
    const tee = fakeTee();
    const { file } = writeConfig();
    await registerAcknowledged(file, tee);

    const c = capture({ env: {} }); // reading needs no wallet: provider.address is enough
    const code = await service({ configPath: writeConfig({ providerAddress: provider.address }).file }, c.io, { tee });

    expect(code, c.text()).toBe(0);
    const text = c.text();
    for (const field of ['provider', 'serviceType', 'url', 'model', 'verifiability', 'inputPrice', 'additionalInfo', 'updatedAt']) {
      expect(text).toMatch(new RegExp(`^\\s+${field}\\s`, 'm'));
    }
    expect(text).toMatch(/outputPrice\s+2000000000000000 wei \(0\.002 0G\) per image/);
    expect(text).toMatch(/teeSignerAcknowledged\s+true/);
    expect(text).toContain(`the contract owner acknowledged signer ${tee.address}`);
    expect(text).toContain('✓ teeSignerAddress is this daemon\'s TEE key');
    expect(text).toContain('The on-chain service matches the local config');
  });

  it('--json: the service, this daemon\'s key, and a verdict per field', async () => {
    const tee = fakeTee();
    const { file, dataDir } = writeConfig();
    await registerAcknowledged(file, tee);
    const c = capture();
    const changed = writeConfig({ dataDir, models: [{ id: 'acme/flux-1', pricePerImageWei: 5n }], url: null });
    expect(await service({ configPath: changed.file, json: true }, c.io, { tee })).toBe(0);
    expect(c.out).toHaveLength(1);
    const report = JSON.parse(c.out[0]!) as Record<string, any>;
    expect(report).toMatchObject({
      provider: provider.address,
      contract: deployment.address,
      chainId: chain.chainId,
      registered: true,
      service: { model: 'acme/flux-1', outputPrice: PRICE_WEI.toString(), teeSignerAcknowledged: true },
      teeKey: { address: tee.address, mode: 'dstack', insecure: false, keySource: 'test-fake' },
      differences: 1,
    });
    const verdicts = Object.fromEntries((report.comparison as Array<{ field: string; verdict: string }>).map((f) => [f.field, f.verdict]));
    expect(verdicts).toEqual({
      serviceType: 'match',
      url: 'unknown',
      model: 'match',
      verifiability: 'match',
      inputPrice: 'match',
      outputPrice: 'differs',
      additionalInfo: 'match',
      teeSignerAddress: 'match',
    });
    expect(report.comparison.find((f: { field: string }) => f.field === 'outputPrice')).toEqual({ field: 'outputPrice', verdict: 'differs', chain: PRICE_WEI.toString(), local: '5' });
    expect(c.err).toEqual([
      '… opening this daemon\'s TEE key (tee.mode dev)',
      `… reading the on-chain service of ${provider.address} (chain ${chain.chainId})`,
    ]);

    const missing = capture();
    await chain.revert(snapshot);
    snapshot = await chain.snapshot();
    expect(await service({ configPath: writeConfig().file, json: true, quiet: true }, missing.io, { tee })).toBe(1);
    expect(JSON.parse(missing.out.join(''))).toMatchObject({ registered: false, service: null, comparison: [], differences: 0 });
  });

  it('flags a TEE signer that is not this daemon\'s key, and a local price change', async () => {
    const registeredWith = fakeTee();
    const { file, dataDir } = writeConfig();
    await registerAcknowledged(file, registeredWith);
    const daemonKey = fakeTee();

    const c = capture();
    const changed = writeConfig({ dataDir, models: [{ id: 'acme/flux-1', pricePerImageWei: 5n }] });
    const code = await service({ configPath: changed.file }, c.io, { tee: daemonKey });

    expect(code, c.text()).toBe(0);
    expect(c.text()).toContain(
      `✗ teeSignerAddress on chain (${registeredWith.address}) differs from this daemon's TEE key (${daemonKey.address}) — run pixeld register`,
    );
    expect(c.text()).toMatch(/✗ outputPrice differs: chain 2000000000000000 wei .* local 5 wei/);
    expect(c.text()).toContain('2 difference(s) with the local config: run pixeld register');
  });
});

// ------------------------------------------------------------------------------ the real CLI

describe('the pixeld command line', () => {
  it('runs register --dry-run end to end without printing the provider key', async () => {
    const { file } = writeConfig();
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, PIXELD_PROVIDER_KEY: provider.privateKey };

    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'register', '--dry-run', '--config', file], {
      cwd: REPO_ROOT,
      env,
      timeout: 60_000,
    });

    expect(stdout).toContain(`Provider wallet:  ${provider.address}`);
    expect(stdout).toContain('serviceType            "text-to-image"');
    expect(stdout).toContain('Dry run: nothing sent.');
    expect(stdout + stderr).not.toContain(provider.privateKey.slice(2));
    expect(await readService()).toBeUndefined();
  });
});

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
