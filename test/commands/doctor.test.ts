/**
 * `pixeld doctor` against a real set-up: anvil with pixeld's InferenceServing, a service registered by
 * `pixeld register` and acknowledged by the owner, a daemon in dstack mode (the fake guest agent) with the
 * reference backend, a billed job in its SQLite file. Then one thing broken at a time: each must give its
 * own ✗ line and fix, the checks that depend on it "–", and exit 1. Output is read line by line.
 */
import { writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import Database from 'better-sqlite3';
import { Wallet, parseEther } from 'ethers';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { CommandIo } from '../../src/commands/command-io.js';
import { doctor as doctorCommand, runDoctorCli, type DoctorReport } from '../../src/commands/doctor.js';
import { migrate } from '../../src/commands/migrate.js';
import { register } from '../../src/commands/register.js';
import type { ConfigInput } from '../../src/config/schema.js';
import { MIGRATIONS } from '../../src/jobs/sqlite/database.js';
import { reportDataOfTdxQuote } from '../../src/tee/configfs-tsm.js';
import { openTdxKeyProvider } from '../../src/tee/tdx-key.js';
import type { BillingChain } from '../billing/fixture.js';
import { completedJob, fundedUsers, NEVER, PRICE } from '../billing/fixture.js';
import {
  acknowledgeService,
  deployInferenceServing,
  registerService,
  revokeServiceAcknowledgement,
  startAnvil,
  type Anvil,
  type InferenceServingContract,
  type ServiceParamsInput,
} from '../chain/anvil.js';
import { createFakeTsm } from '../fakes/configfs-tsm.js';
import { buildFakeTdxQuote, startFakeDstackAgent, type FakeDstackAgent } from '../fakes/dstack-guest-agent.js';
import { startTestDaemon, tempDir, type TestDaemon } from '../helpers/daemon.js';
import { createTestDatabase, type TestDatabase } from '../helpers/postgres.js';

const PUBLIC_URL = 'https://pixeld.example.com';

let anvil: Anvil;
let serving: InferenceServingContract;
let owner: Wallet;
let provider: Wallet;
let agent: FakeDstackAgent;
let daemon: TestDaemon;
let dataDir: string;

/** The daemon's config, as a file names it (the data dir apart). */
function baseConfig(): Record<string, any> {
  return {
    dataDir,
    // Every test asks for a fresh report; a real doctor run asks for one.
    tee: { mode: 'dstack', dstack: { endpoint: agent.socketPath }, freshReportsPerMinute: 1_000, freshReportsPerClientPerMinute: 1_000 },
    auth: { mode: '0g', chainCacheMs: 0 },
    chain: { rpcUrl: anvil.rpcUrl, chainId: anvil.chainId, servingAddress: serving.target as string, rpcTimeoutMs: 2_000 },
    provider: { address: provider.address, service: { url: PUBLIC_URL, additionalInfo: { ProviderName: 'Acme' } } },
    backends: [{ id: 'reference', type: 'reference', concurrency: 2, latencyMsPerImage: 0 }],
    models: [{ id: 'ref', backend: 'reference', capabilities: ['generation'], sizes: ['64x64', '256x256'], pricePerImageWei: PRICE.toString() }],
    billing: { settlementCron: NEVER, thresholdCheckIntervalMs: 3_600_000 },
  };
}

function writeConfig(config: Record<string, unknown>): string {
  const file = path.join(tempDir('pixeld-doctor-config-'), 'pixeld.json');
  writeFileSync(file, JSON.stringify(config));
  return file;
}

interface Run {
  code: number;
  lines: string[];
  stderr: string[];
}

async function doctor(args: string[], env: NodeJS.ProcessEnv = { PIXELD_PROVIDER_KEY: provider.privateKey }): Promise<Run> {
  const lines: string[] = [];
  const stderr: string[] = [];
  const io: Pick<CommandIo, 'stdout' | 'stderr' | 'env'> = { stdout: (l) => lines.push(...l.split('\n')), stderr: (l) => stderr.push(l), env };
  const code = await runDoctorCli(args, io);
  return { code, lines, stderr };
}

/** doctor on the healthy config with `change` applied, against the running daemon. */
async function doctorWith(change: (config: Record<string, any>) => void, extra: string[] = [], env?: NodeJS.ProcessEnv): Promise<Run> {
  const config = baseConfig();
  change(config);
  return doctor(['--config', writeConfig(config), '--url', daemon.url, ...extra], env);
}

/** The report line of one check (by its title). */
function line(run: Run, title: string): string {
  const found = run.lines.find((l) => new RegExp(`^  . ${escape(title)}: `).test(l));
  if (!found) throw new Error(`no line for "${title}" in:\n${run.lines.join('\n')}`);
  return found;
}

/** The fix printed under a check's line. */
function fixOf(run: Run, title: string): string {
  const at = run.lines.indexOf(line(run, title));
  const next = run.lines[at + 1] ?? '';
  if (!next.startsWith('      fix: ')) throw new Error(`no fix under "${title}"`);
  return next.slice('      fix: '.length);
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

beforeAll(async () => {
  anvil = await startAnvil();
  [owner, provider] = anvil.wallets as [Wallet, Wallet];
  serving = (await deployInferenceServing(owner)).contract;
  agent = await startFakeDstackAgent();
  dataDir = tempDir('pixeld-doctor-data-');

  // Registered the way a provider does it, from the same config the daemon runs.
  const file = writeConfig(baseConfig());
  const out: string[] = [];
  const io: CommandIo = { stdout: (l) => out.push(l), stderr: (l) => out.push(l), isTTY: false, env: { PIXELD_PROVIDER_KEY: provider.privateKey } };
  const registered = await register({ configPath: file, yes: true }, io);
  if (registered !== 0) throw new Error(`pixeld register failed:\n${out.join('\n')}`);
  await acknowledgeService(serving, owner, provider.address);

  const { dataDir: _omit, ...daemonConfig } = baseConfig();
  daemon = await startTestDaemon({ config: daemonConfig as Partial<ConfigInput>, dataDir, env: { PIXELD_PROVIDER_KEY: provider.privateKey } });
  const chain = { anvil, serving, owner, provider, teeKey: Wallet.createRandom() } as unknown as BillingChain;
  const [user] = await fundedUsers(chain, 1, parseEther('1'));
  await completedJob(daemon, chain, user!, 2);
}, 120_000);

afterAll(async () => {
  await daemon?.close();
  await agent?.close();
  await anvil?.stop();
});

let snapshot = '';
beforeEach(async () => {
  snapshot = await anvil.snapshot();
});
afterEach(async () => {
  await anvil.revert(snapshot);
});

describe('pixeld doctor on a healthy set-up', () => {
  it('passes every check, one ✓ line each, and exits 0', async () => {
    const run = await doctorWith(() => undefined);
    expect(run.stderr).toEqual([]);
    expect(run.code).toBe(0);
    const checkLines = run.lines.filter((l) => /^  . /.test(l));
    expect(checkLines.length).toBe(19);
    expect(checkLines.filter((l) => !l.startsWith('  ✓ '))).toEqual([]);
    expect(run.lines.some((l) => l.startsWith('      fix: '))).toBe(false);

    expect(line(run, 'database schema')).toBe(`  ✓ database schema: SQLite ${path.join(dataDir, 'pixeld.sqlite')}, schema ${MIGRATIONS.length} (current)`);
    expect(line(run, 'backend reference generates')).toMatch(/^  ✓ backend reference generates: model ref, 64x64, 1 image \(image\/png, [\d.]+ (B|KiB)\) in \d+ ms$/);
    expect(line(run, 'TEE mode')).toBe('  ✓ TEE mode: tee.mode dstack');
    expect(line(run, 'TEE key')).toBe(`  ✓ TEE key: ${daemon.daemon.tee.address} (dstack, key from dstack-kms:pixeld/signing/v1)`);
    expect(line(run, 'daemon answers')).toBe(`  ✓ daemon answers: ${daemon.url} is up and ready`);
    expect(line(run, 'attestation')).toBe(`  ✓ attestation: quote from dstack-guest-agent binds signer ${daemon.daemon.tee.address} to a fresh nonce`);
    expect(line(run, 'RPC and chain id')).toMatch(new RegExp(`^  ✓ RPC and chain id: ${escape(new URL(anvil.rpcUrl).origin)}, chain 31337, block \\d+$`));
    expect(line(run, 'provider wallet')).toBe(`  ✓ provider wallet: ${provider.address}, key loaded`);
    expect(line(run, 'service registered')).toBe(`  ✓ service registered: model ref, ${PRICE} wei (0.001 0G) per image, url ${PUBLIC_URL}`);
    expect(line(run, 'service TEE signer')).toBe(`  ✓ service TEE signer: ${daemon.daemon.tee.address}, the running daemon's key`);
    expect(line(run, 'TEE signer acknowledged')).toBe(`  ✓ TEE signer acknowledged: teeSignerAcknowledged is true for ${daemon.daemon.tee.address}`);
    expect(line(run, 'provider wallet gas')).toMatch(/^  ✓ provider wallet gas: \d+ wei \([\d.]+ 0G\); a settlement transaction of 50 users costs up to [\d.]+ 0G$/);
    // The job billed two images: 2 × PRICE, one receipt, one user; the next round of "0 0 1 1 *" is a 1 January.
    expect(line(run, 'unsettled fees')).toMatch(
      new RegExp(`^  ✓ unsettled fees: ${2n * PRICE} wei \\(0\\.002 0G\\) in 1 receipt of 1 user; next round \\d{4}-01-01T\\d\\d:00:00\\.000Z \\(billing\\.settlementCron "0 0 1 1 \\*"\\)`),
    );
    expect(run.lines.at(-1)).toBe('19 passed, 0 warning(s), 0 failed, 0 skipped');
  });

  it('--json prints one object with every check, and --no-generation skips only the generation', async () => {
    const run = await doctorWith(() => undefined, ['--json', '--no-generation']);
    expect(run.code).toBe(0);
    expect(run.lines).toHaveLength(1);
    // Meanwhile each check's mark and title on stderr, for a person watching; --quiet drops them.
    expect(run.stderr).toHaveLength(19);
    expect(run.stderr.slice(0, 2)).toEqual(['… ✓ config', '… ✓ data dir writable']);
    expect(run.stderr).toContain('… – backend reference generates');
    const quiet = await doctorWith(() => undefined, ['--json', '--quiet', '--no-generation']);
    expect(quiet.stderr).toEqual([]);
    expect((JSON.parse(quiet.lines[0]!) as DoctorReport).ok).toBe(true);
    const report = JSON.parse(run.lines[0]!) as DoctorReport;
    expect(report.ok).toBe(true);
    expect(report.checks.map((c) => c.id)).toEqual([
      'config', 'data-dir', 'disk-space', 'database', 'backend:reference', 'generation:reference', 'tee-mode', 'tee-key', 'daemon',
      'attestation', 'chain-rpc', 'contract', 'provider', 'service-registered', 'service-fields', 'service-signer',
      'service-acknowledged', 'gas', 'unsettled',
    ]);
    expect(report.checks.find((c) => c.id === 'generation:reference')).toEqual({
      id: 'generation:reference', group: 'backends', status: 'skip', summary: 'skipped (--no-generation)',
    });
    expect(report.checks.filter((c) => c.status !== 'pass').map((c) => c.id)).toEqual(['generation:reference']);
  });

  it('without the provider key in its environment: a warning naming the env var, exit 0', async () => {
    const run = await doctorWith(() => undefined, ['--no-generation'], {});
    expect(run.code).toBe(0);
    expect(line(run, 'provider wallet')).toBe(
      `  ⚠ provider wallet: ${provider.address} (provider.address); its key is not in this environment, and the daemon needs it to settle`,
    );
    expect(fixOf(run, 'provider wallet')).toBe("set env PIXELD_PROVIDER_KEY to the provider wallet's key, or provider.wallet.keystoreFile where the daemon runs");
    expect(line(run, 'provider wallet gas')).toMatch(/^  ✓ /);
  });
});

describe('pixeld doctor on broken set-ups', () => {
  it('an unreachable backend: ✗ with the URL and the fix, its generation skipped', async () => {
    const port = await closedPort();
    const run = await doctorWith((c) => {
      c.backends.push({ id: 'gpu', type: 'openai', baseUrl: `http://127.0.0.1:${port}/v1` });
      c.models.push({ id: 'flux', backend: 'gpu', capabilities: ['generation'], sizes: ['512x512'] });
    });
    expect(run.code).toBe(1);
    expect(line(run, 'backend gpu reachable')).toMatch(new RegExp(`^  ✗ backend gpu reachable: http://127\\.0\\.0\\.1:${port}/v1: .*ECONNREFUSED`));
    expect(fixOf(run, 'backend gpu reachable')).toBe(`start the openai server at http://127.0.0.1:${port}/v1, or fix backends[id=gpu].baseUrl`);
    expect(line(run, 'backend gpu generates')).toBe('  – backend gpu generates: skipped: backend:gpu failed');
    expect(line(run, 'backend reference generates')).toMatch(/^  ✓ /);
    expect(run.lines.at(-1)).toBe('19 passed, 0 warning(s), 1 failed, 1 skipped');
  });

  it("a backend its adapter refuses: ✗ with the adapter's message, not a connection hint", async () => {
    const run = await doctorWith((c) => {
      c.backends.push({ id: 'comfy', type: 'comfyui', baseUrl: 'http://127.0.0.1:8188', workflows: {} });
      c.models.push({ id: 'sdxl', backend: 'comfy', capabilities: ['generation'], sizes: ['512x512'] });
    });
    expect(run.code).toBe(1);
    expect(line(run, 'backend comfy reachable')).toMatch(/^  ✗ backend comfy reachable: config: backends\.comfy\.workflows: no workflow configured/);
    expect(fixOf(run, 'backend comfy reachable')).toBe('correct backends[id=comfy]; the daemon refuses this backend at start too');
  });

  it('a backend that accepts the connection and never answers: ✗ after the check timeout, not a hang', async () => {
    const silent = createHttpServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const { port } = silent.address() as AddressInfo;
    try {
      const config = baseConfig();
      config.backends.push({ id: 'stuck', type: 'openai', baseUrl: `http://127.0.0.1:${port}/v1` });
      config.models.push({ id: 'stuck-model', backend: 'stuck', capabilities: ['generation'], sizes: ['512x512'] });
      const lines: string[] = [];
      const startedMs = Date.now();
      const code = await doctorCommand(
        { configPath: writeConfig(config), url: daemon.url, generation: false, checkTimeoutMs: 400 },
        { stdout: (l) => lines.push(l), stderr: (l) => lines.push(l), env: { PIXELD_PROVIDER_KEY: provider.privateKey } },
      );
      expect(code).toBe(1);
      expect(Date.now() - startedMs).toBeLessThan(10_000);
      expect(lines).toContain('  ✗ backend stuck reachable: no answer within 0.4 s');
    } finally {
      silent.closeAllConnections();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });

  it('a wrong chain id: ✗ naming both ids, the chain checks that need the RPC skipped', async () => {
    const run = await doctorWith((c) => {
      c.chain.chainId = 16600;
    });
    expect(run.code).toBe(1);
    expect(line(run, 'RPC and chain id')).toBe(`  ✗ RPC and chain id: ${new URL(anvil.rpcUrl).origin} is chain 31337, chain.chainId is 16600`);
    expect(fixOf(run, 'RPC and chain id')).toBe('set chain.chainId to 31337, or chain.rpcUrl to an endpoint of chain 16600');
    for (const title of ['InferenceServing contract', 'service registered', 'provider wallet gas']) {
      expect(line(run, title)).toBe(`  – ${title}: skipped: chain-rpc failed`);
    }
    for (const title of ['service matches config', 'service TEE signer', 'TEE signer acknowledged']) {
      expect(line(run, title)).toBe(`  – ${title}: skipped: chain-rpc failed`);
    }
    expect(run.lines.filter((l) => l.startsWith('  ✗ '))).toHaveLength(1);
  });

  it('an unreachable RPC: ✗ with the endpoint and the fix', async () => {
    const port = await closedPort();
    const run = await doctorWith((c) => {
      c.chain.rpcUrl = `http://127.0.0.1:${port}/some-api-key`;
    });
    expect(run.code).toBe(1);
    const rpc = line(run, 'RPC and chain id');
    expect(rpc).toMatch(new RegExp(`^  ✗ RPC and chain id: http://127\\.0\\.0\\.1:${port}: `));
    expect(rpc).not.toContain('some-api-key');
    expect(fixOf(run, 'RPC and chain id')).toBe(`check chain.rpcUrl (http://127.0.0.1:${port}) and that this machine reaches it`);
  });

  it('no service for the provider: ✗ with pixeld register, the service checks skipped', async () => {
    const stranger = anvil.wallets[5]!;
    const run = await doctorWith((c) => {
      c.provider.address = stranger.address;
    }, [], { PIXELD_PROVIDER_KEY: stranger.privateKey });
    expect(run.code).toBe(1);
    expect(line(run, 'service registered')).toBe(`  ✗ service registered: no service for provider ${stranger.address} on contract ${serving.target as string}`);
    expect(fixOf(run, 'service registered')).toBe('run npx pixeld register');
    for (const title of ['service matches config', 'service TEE signer', 'TEE signer acknowledged']) {
      expect(line(run, title)).toBe(`  – ${title}: skipped: service-registered failed`);
    }
  });

  it('a url that differs from the chain: ✗ naming both urls, with pixeld register', async () => {
    const run = await doctorWith((c) => {
      c.provider.service.url = 'https://images.example.org';
    });
    expect(run.code).toBe(1);
    const fields = line(run, 'service matches config');
    expect(fields).toMatch(/^  ✗ service matches config: url: chain "https:\/\/pixeld\.example\.com", config "https:\/\/images\.example\.org"; additionalInfo: /);
    expect(fields).toContain('"VerifierURL":"https://images.example.org/v1/attestation/report"');
    expect(fixOf(run, 'service matches config')).toBe('run npx pixeld register (npx pixeld register --dry-run shows the change)');
    expect(line(run, 'service TEE signer')).toMatch(/^  ✓ /);
  });

  it('a price that differs from the chain: ✗ naming both prices in wei', async () => {
    const run = await doctorWith((c) => {
      c.models[0].pricePerImageWei = (2n * PRICE).toString();
    });
    expect(line(run, 'service matches config')).toBe(
      `  ✗ service matches config: outputPrice: chain ${PRICE} wei (0.001 0G) per image, config ${2n * PRICE} wei (0.002 0G) per image`,
    );
  });

  it("a signer on chain that is not the daemon's: ✗ naming both, and the reset acknowledgement too", async () => {
    const current = (await serving.getFunction('getService').staticCall(provider.address)) as Record<string, unknown>;
    const other = Wallet.createRandom().address;
    const params = Object.fromEntries(
      ['serviceType', 'url', 'model', 'verifiability', 'inputPrice', 'outputPrice', 'additionalInfo'].map((k) => [k, current[k]]),
    ) as Omit<ServiceParamsInput, 'teeSignerAddress'>;
    await registerService(serving, provider, { ...params, teeSignerAddress: other });
    const run = await doctorWith(() => undefined);
    expect(run.code).toBe(1);
    expect(line(run, 'service TEE signer')).toBe(
      `  ✗ service TEE signer: on chain ${other}, the running daemon signs with ${daemon.daemon.tee.address}: receipts and settlements will not verify`,
    );
    expect(fixOf(run, 'service TEE signer')).toBe('run npx pixeld register, then have the contract owner acknowledge the new signer');
    expect(line(run, 'service matches config')).toMatch(/^  ✓ /);
    expect(line(run, 'TEE signer acknowledged')).toMatch(/^  ✗ /);
  });

  it('an unacknowledged signer: ✗ with who must acknowledge it', async () => {
    await revokeServiceAcknowledgement(serving, owner, provider.address);
    const run = await doctorWith(() => undefined);
    expect(run.code).toBe(1);
    expect(line(run, 'TEE signer acknowledged')).toMatch(/^  ✗ TEE signer acknowledged: teeSignerAcknowledged is false: settlements fail with NO_TEE_SIGNER/);
    expect(fixOf(run, 'TEE signer acknowledged')).toContain('acknowledgeTEESignerByOwner');
  });

  it('dev mode with a chain configured: ✗ with the TEE fix', async () => {
    const run = await doctorWith((c) => {
      c.tee = { mode: 'dev' };
      c.dataDir = tempDir('pixeld-doctor-dev-');
    });
    expect(run.code).toBe(1);
    expect(line(run, 'TEE mode')).toBe(
      '  ✗ TEE mode: tee.mode dev with chain.* configured: the key is a plain file and nothing is attested, but a registered service must be attested',
    );
    expect(fixOf(run, 'TEE mode')).toBe('set tee.mode to dstack or tdx and run pixeld inside the TEE (README "Running in a TEE")');
    // The daemon at --url is not the one this config describes: said so, not mistaken for a broken TEE.
    expect(line(run, 'attestation')).toBe(`  ✗ attestation: the daemon at ${daemon.url} runs tee mode dstack, this config says dev`);
  });

  it('dev mode without a chain is a warning, and exits 0 when nothing else fails', async () => {
    const devDir = tempDir('pixeld-doctor-dev-');
    const dev = await startTestDaemon({ dataDir: devDir, config: { backends: baseConfig().backends, models: [{ ...baseConfig().models[0], pricePerImageWei: '0' }] } });
    try {
      const file = writeConfig({ dataDir: devDir, backends: baseConfig().backends, models: [{ ...baseConfig().models[0], pricePerImageWei: '0' }] });
      const run = await doctor(['--config', file, '--url', dev.url], {});
      expect(run.code).toBe(0);
      expect(line(run, 'TEE mode')).toBe('  ⚠ TEE mode: tee.mode dev: the key is a plain file and nothing is attested (development only)');
      expect(fixOf(run, 'TEE mode')).toBe('set tee.mode to dstack or tdx and run pixeld inside the TEE (README "Running in a TEE")');
      expect(line(run, 'TEE key')).toBe(`  ✓ TEE key: ${dev.daemon.tee.address} (dev, key from dev-file)`);
      expect(line(run, 'attestation')).toBe(`  ✓ attestation: signer ${dev.daemon.tee.address} (dev mode: no quote)`);
      expect(line(run, 'RPC and chain id')).toBe('  – RPC and chain id: skipped: chain.* is not set (no 0G billing, nothing registered)');
      expect(line(run, 'unsettled fees')).toBe('  – unsettled fees: skipped: chain.* is not set (no 0G billing, nothing registered)');
    } finally {
      await dev.close();
    }
  });

  it('a daemon that is up but not ready: ⚠ naming the part /readyz reports failing', async () => {
    const port = await closedPort();
    const devDir = tempDir('pixeld-doctor-unready-');
    const backends = [{ id: 'gpu', type: 'openai', baseUrl: `http://127.0.0.1:${port}/v1` }];
    const models = [{ id: 'flux', backend: 'gpu', capabilities: ['generation'], sizes: ['512x512'] }];
    const d = await startTestDaemon({ dataDir: devDir, config: { backends, models } as Partial<ConfigInput> });
    try {
      const run = await doctor(['--config', writeConfig({ dataDir: devDir, backends, models }), '--url', d.url], {});
      expect(line(run, 'daemon answers')).toMatch(new RegExp(`^  ⚠ daemon answers: ${escape(d.url)} is up but not ready: backend gpu failing: `));
      expect(fixOf(run, 'daemon answers')).toBe(`see ${d.url}/readyz; the checks here name the part to fix`);
      expect(line(run, 'attestation')).toMatch(/^  ✓ /);
    } finally {
      await d.close();
    }
  });

  it("tdx mode: the key is the daemon's, attested by a configfs-tsm quote over doctor's nonce", async () => {
    const tsm = await createFakeTsm();
    const tdxDir = tempDir('pixeld-doctor-tdx-');
    const tdx = { tsmReportDir: tsm.reportDir, keyFile: path.join(tdxDir, 'tee-signing-key') };
    const key = await openTdxKeyProvider(tdx, { fs: tsm.fs });
    const models = [{ ...baseConfig().models[0], pricePerImageWei: '0' }];
    const d = await startTestDaemon({ dataDir: tdxDir, tee: key, config: { tee: { mode: 'tdx', tdx }, backends: baseConfig().backends, models } });
    try {
      const file = writeConfig({ dataDir: tdxDir, tee: { mode: 'tdx', tdx }, backends: baseConfig().backends, models });
      const run = await doctor(['--config', file, '--url', d.url, '--no-generation'], {});
      expect(run.code).toBe(0);
      expect(line(run, 'TEE mode')).toBe('  ✓ TEE mode: tee.mode tdx');
      expect(line(run, 'TEE key')).toBe("  ✓ TEE key: tee.mode tdx: the key lives in the daemon's memory, attested by the running daemon (below)");
      expect(line(run, 'attestation')).toBe(`  ✓ attestation: quote from configfs-tsm binds signer ${key.address} to a fresh nonce`);
    } finally {
      await d.close();
      await tsm.close();
    }
  });

  it('an unwritable data dir: ✗ with the path and the fix, free space skipped', async () => {
    const parent = tempDir('pixeld-doctor-file-');
    writeFileSync(path.join(parent, 'not-a-dir'), 'x');
    const bad = path.join(parent, 'not-a-dir', 'data');
    const run = await doctorWith((c) => {
      c.dataDir = bad;
    });
    expect(run.code).toBe(1);
    expect(line(run, 'data dir writable')).toMatch(new RegExp(`^  ✗ data dir writable: ${escape(bad)}: ENOTDIR`));
    expect(fixOf(run, 'data dir writable')).toBe('make dataDir writable by the user running pixeld, or point dataDir (env PIXELD_DATA_DIR) elsewhere');
    expect(line(run, 'free space')).toBe('  – free space: skipped: data-dir failed');
  });

  it('a pending SQLite migration: ✗ with pixeld migrate, and ✓ once migrated', async () => {
    const oldDir = tempDir('pixeld-doctor-old-');
    const db = new Database(path.join(oldDir, 'pixeld.sqlite'));
    for (const sql of MIGRATIONS.slice(0, -1)) db.exec(sql);
    db.pragma(`user_version = ${MIGRATIONS.length - 1}`);
    db.close();
    const before = await doctorWith((c) => {
      c.dataDir = oldDir;
    }, ['--no-generation']);
    expect(before.code).toBe(1);
    expect(line(before, 'database schema')).toBe(
      `  ✗ database schema: SQLite ${path.join(oldDir, 'pixeld.sqlite')} is at schema ${MIGRATIONS.length - 1}, 1 migration pending (latest ${MIGRATIONS.length})`,
    );
    expect(fixOf(before, 'database schema')).toBe('run npx pixeld migrate');
    expect(line(before, 'unsettled fees')).toBe('  – unsettled fees: skipped: database failed');

    const config = baseConfig();
    config.dataDir = oldDir;
    expect(await migrate({ configPath: writeConfig(config) }, { stdout: () => undefined, stderr: () => undefined, env: {} })).toBe(0);
    const after = await doctorWith((c) => {
      c.dataDir = oldDir;
    }, ['--no-generation']);
    expect(line(after, 'database schema')).toMatch(/^  ✓ database schema: .*\(current\)$/);
    expect(line(after, 'unsettled fees')).toMatch(/^  ✓ unsettled fees: 0 wei \(0\.0 0G\) in 0 receipts of 0 users; /);
  });

  it('an empty provider wallet: ✗ not enough gas for one settlement, with the address to fund', async () => {
    await anvil.setBalance(provider.address, 0n);
    const run = await doctorWith(() => undefined);
    expect(run.code).toBe(1);
    expect(line(run, 'provider wallet gas')).toMatch(
      /^  ✗ provider wallet gas: 0 wei \(0\.0 0G\); a settlement transaction of 50 users costs up to [\d.]+ 0G: not enough for one$/,
    );
    expect(fixOf(run, 'provider wallet gas')).toBe(`send 0G to the provider wallet (${provider.address})`);
    expect(run.lines.filter((l) => l.startsWith('  ✗ ')), run.lines.join('\n')).toHaveLength(1);
  });

  it('no daemon at --url: ✗ with how to start it, the attestation skipped', async () => {
    const port = await closedPort();
    const config = baseConfig();
    const run = await doctor(['--config', writeConfig(config), '--url', `http://127.0.0.1:${port}`, '--no-generation']);
    expect(run.code).toBe(1);
    expect(line(run, 'daemon answers')).toMatch(new RegExp(`^  ✗ daemon answers: http://127\\.0\\.0\\.1:${port}: connect ECONNREFUSED`));
    expect(fixOf(run, 'daemon answers')).toBe('start the daemon (npx pixeld serve), or pass --url <the address it listens on>');
    expect(line(run, 'attestation')).toBe('  – attestation: skipped: daemon failed');
    // Without the daemon's signer, the signer is compared with this config's own key (dstack opens here).
    expect(line(run, 'service TEE signer')).toBe(`  ✓ service TEE signer: ${daemon.daemon.tee.address}, this config's key`);
  });

  it('a config file that is not there: ✗ naming it, exit 1', async () => {
    const run = await doctor(['--config', '/nonexistent/pixeld.yaml']);
    expect(run.code).toBe(1);
    expect(run.lines[0]).toBe('Config');
    expect(run.lines[1]).toBe('  ✗ config: file not found: /nonexistent/pixeld.yaml');
    expect(run.lines.at(-1)).toBe('0 passed, 0 warning(s), 1 failed, 0 skipped');
  });

  it('an invalid config: ✗ naming the key, nothing else checked', async () => {
    const config = baseConfig();
    config.chain.chainId = 'thirty';
    const run = await doctor(['--config', writeConfig(config), '--json']);
    expect(run.code).toBe(1);
    const report = JSON.parse(run.lines[0]!) as DoctorReport;
    expect(report).toEqual({
      ok: false,
      checks: [
        {
          id: 'config',
          group: 'config',
          status: 'fail',
          summary: 'chain.chainId: Invalid input: expected number, received string',
          hint: 'correct what the message names (config/pixeld.example.yaml documents every key; --config or PIXELD_CONFIG names the file); every other check needs a valid config',
        },
      ],
    });
  });
});

describe('pixeld doctor: PostgreSQL', () => {
  let database: TestDatabase;
  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    await database?.drop();
  });

  it('an empty database has every migration pending; migrated, it is current', async () => {
    const run = await doctorWith((c) => {
      c.database = { url: database.url };
    }, ['--no-generation']);
    const name = database.url.replace(/^.*\//, '');
    expect(line(run, 'database schema')).toMatch(new RegExp(`^  ✗ database schema: PostgreSQL postgres://.*/${name} is at schema 0, \\d+ migrations pending`));
    expect(fixOf(run, 'database schema')).toBe('run npx pixeld migrate');
    await database.pool();
    const after = await doctorWith((c) => {
      c.database = { url: database.url };
    }, ['--no-generation']);
    expect(line(after, 'database schema')).toMatch(new RegExp(`^  ✓ database schema: PostgreSQL postgres://.*/${name}, schema \\d+ \\(current\\)$`));
    expect(line(after, 'unsettled fees')).toMatch(/^  ✓ unsettled fees: 0 wei /);
  });
});

describe('pixeld doctor: usage', () => {
  it('an unknown option or a bad --url exits 2 with the usage', async () => {
    const unknown = await doctor(['--bogus']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr.join('\n')).toMatch(/^pixeld doctor: Unknown option '--bogus'/);
    const badUrl = await doctor(['--url', 'localhost:8080']);
    expect(badUrl.code).toBe(2);
    expect(badUrl.stderr[0]).toMatch(/^pixeld doctor: --url localhost:8080: must be an http\(s\) URL/);
  });
});

describe('reportDataOfTdxQuote, which doctor reads the daemon\'s quote with', () => {
  const reportData = Buffer.alloc(64);
  reportData.write('pixeld doctor report data', 'ascii');

  it('reads report_data from a v4 TDX quote, and from a v5 one after its body descriptor', () => {
    const v4 = buildFakeTdxQuote(reportData);
    expect(reportDataOfTdxQuote(v4)).toEqual(reportData);
    // v5: the same TD report, preceded by a 6-byte descriptor (body type 2 = TD report 1.0, its size).
    const descriptor = Buffer.alloc(6);
    descriptor.writeUInt16LE(2, 0);
    descriptor.writeUInt32LE(584, 2);
    const v5 = Buffer.concat([v4.subarray(0, 48), descriptor, v4.subarray(48)]);
    v5.writeUInt16LE(5, 0);
    expect(reportDataOfTdxQuote(v5)).toEqual(reportData);
  });

  it('refuses what is not a TDX quote: another TEE type, an unknown version, a short buffer', () => {
    const sgx = buildFakeTdxQuote(reportData);
    sgx.writeUInt32LE(0, 4);
    expect(reportDataOfTdxQuote(sgx)).toBeUndefined();
    const v3 = buildFakeTdxQuote(reportData);
    v3.writeUInt16LE(3, 0);
    expect(reportDataOfTdxQuote(v3)).toBeUndefined();
    expect(reportDataOfTdxQuote(buildFakeTdxQuote(reportData).subarray(0, 600))).toBeUndefined();
  });
});
