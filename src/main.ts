import { mkdirSync } from 'node:fs';
import type { Server } from 'node:http';
import { hostname } from 'node:os';
import type { Express } from 'express';
import { Registry } from 'prom-client';
import sharp from 'sharp';
import { AdminToken } from './auth/admin-token.js';
import { ApiKeyRing } from './auth/api-keys.js';
import type { Authenticators } from './auth/authenticate.js';
import { OwnerRateLimiter } from './auth/rate-limiter.js';
import { ZeroGAuthenticator } from './auth/zero-g-auth.js';
import { ModelCatalog } from './backends/catalog.js';
import { loadProviderWallet, resolveProviderAddress } from './chain/provider-wallet.js';
import { createPriceGuard, type PriceGuard } from './chain/price-guard.js';
import { createChainClient, type ChainClient, type ChainConfig } from './chain/serving-contract.js';
import { createBackend } from './backends/create-backend.js';
import type { ImageBackend } from './backends/types.js';
import { ConfigError, loadConfig, type LoadedConfig } from './config/load.js';
import type { Config } from './config/schema.js';
import { createApp } from './http/app.js';
import { DASHBOARD_SESSION_SECRET_USE } from './http/dashboard/session.js';
import { Base64Images } from './http/render.js';
import type { BlobStore } from './images/blob-store.js';
import { maxOutputPixels } from './images/normalize-output.js';
import { JobSignals } from './jobs/job-signals.js';
import { SignerMismatchError } from './jobs/postgres/replica-presence.js';
import { JobRunner } from './jobs/runner.js';
import { JobService } from './jobs/service.js';
import { openStores } from './jobs/open-stores.js';
import { BillingAdmission } from './billing/admission.js';
import type { BillingStore } from './billing/store.js';
import { Settler } from './billing/settlement/settler.js';
import { createSettlementTriggers, validateSettlementCron, type SettlementTriggers } from './billing/settlement/triggers.js';
import type { InterruptedJobPolicy, JobStore } from './jobs/store.js';
import { Sweeper } from './jobs/sweeper.js';
import { createLogger, resolveLogFormat, type Logger } from './obs/logger.js';
import { DaemonMetrics } from './obs/metrics.js';
import { Readiness } from './obs/readiness.js';
import { AttestationService } from './tee/attestation.js';
import { teeDerivedSecret } from './tee/derived-secret.js';
import { TeeError, type TeeKeyProvider } from './tee/key-provider.js';
import { openTeeKeyProvider } from './tee/open-key-provider.js';
import { SettlementJournal } from './tee/settlement-journal.js';
import { PIXELD_VERSION } from './version.js';
import { webhookAddressPolicy } from './webhooks/allow-list.js';
import { WebhookDeliveryWorker } from './webhooks/delivery-worker.js';
import { WebhookSecrets } from './webhooks/secrets.js';
import { systemWebhookNet, type WebhookNetDeps } from './webhooks/webhook-url.js';
import { Webhooks } from './webhooks/webhooks.js';

export interface DaemonOptions {
  config: Readonly<Config>;
  logger: Logger;
  /** Replaces the configured adapters (tests inject fakes that need no network). */
  backends?: ReadonlyMap<string, ImageBackend>;
  /** Replaces the key provider `tee.mode` names (tests inject one on a fake TEE). */
  tee?: TeeKeyProvider;
  /** Environment the provider wallet and API keys are read from. @default process.env */
  env?: NodeJS.ProcessEnv;
  now?: () => number;
  /**
   * The resolver and CAs webhook URLs are checked and delivered with (tests: a stub resolver and a test CA).
   * The addresses allowed are always the config's. @default the system resolver and Node's CAs
   */
  webhookResolver?: Omit<WebhookNetDeps, 'policy'>;
}

export interface Daemon {
  app: Express;
  store: JobStore;
  billing: BillingStore;
  runner: JobRunner;
  service: JobService;
  sweeper: Sweeper;
  /** Sends the outbox's webhook deliveries. */
  webhookWorker: WebhookDeliveryWorker;
  blobs: BlobStore;
  tee: TeeKeyProvider;
  /** Settles receipts on chain; undefined when the chain or the provider wallet is not configured. */
  settler: Settler | undefined;
  /** The cron schedule and early-settlement checks driving `settler`. */
  settlementTriggers: SettlementTriggers | undefined;
  /** Compares model prices with the chain and refuses 0G-billed work above them; undefined without 0G auth. */
  priceGuard: PriceGuard | undefined;
  /**
   * Starts the runner and sweeper (recovering interrupted jobs first), checks model prices against the chain,
   * reconciles settlement and schedules both.
   */
  start(): Promise<void>;
  /** Listens on the configured host and port; resolves with the server once it accepts connections. */
  listen(): Promise<Server>;
  /** Stops taking work, lets running attempts end or aborts them, and closes the store. */
  stop(): Promise<void>;
}

/**
 * Wires one daemon: every dependency (clock, store, blob store, backends, runner) is made here and
 * handed down, so tests can build the same thing around a temp dir.
 */
export async function createDaemon(options: DaemonOptions): Promise<Daemon> {
  const { config, logger } = options;
  const now = options.now ?? Date.now;
  // libvips keeps recent operations, decoded pixels included (up to 50 MB), for reuse; every image this
  // daemon sees is new, so that cache only held memory (issue #7: RSS after 1,000 jobs).
  sharp.cache(false);
  mkdirSync(config.dataDir, { recursive: true });
  // SQLite under dataDir, or PostgreSQL (database.url); missing migrations are applied here.
  const stores = await openStores(config, { onIdleError: (err) => logger.warn('database: an idle connection failed', { error: String(err) }) });
  for (const m of stores.migrations.applied) logger.info(`database: applied migration ${m.version} (${m.name})`, { store: stores.kind });
  logger.info(`database: ${stores.kind} at ${stores.location}, schema ${stores.migrations.to}`);
  const blobs = await stores.openBlobStore({ minFreeBytes: config.limits.minFreeDiskBytes, now });
  const store = stores.jobs;
  const billing = stores.billing;
  const replicaId = replicaIdOf(config);
  const signals = new JobSignals();
  const notifications = stores.listenForJobSignals(signals, (err) =>
    logger.warn('database: the connection listening for other replicas\' job events failed; opening it again', { error: String(err) }),
  );
  await notifications.ready;
  const catalog = new ModelCatalog(config.models);
  const tee = options.tee ?? (await openTeeKeyProvider({ tee: config.tee, dataDir: config.dataDir, nodeEnv: process.env.NODE_ENV }));
  const chainConfig: ChainConfig | undefined =
    config.chain.rpcUrl !== undefined && config.chain.chainId !== undefined && config.chain.servingAddress !== undefined
      ? {
          rpcUrl: config.chain.rpcUrl,
          chainId: config.chain.chainId,
          servingAddress: config.chain.servingAddress,
          rpcTimeoutMs: config.chain.rpcTimeoutMs,
        }
      : undefined;
  const chain = chainConfig ? createChainClient(chainConfig) : undefined;
  const env = options.env ?? process.env;
  const providerWallet = await loadProviderWallet(config.provider.wallet, env, chain?.provider);
  const providerAddress = resolveProviderAddress(config.provider.address, providerWallet);
  if (config.auth.mode.includes('0g') && /^0x0{40}$/.test(providerAddress)) {
    throw new ConfigError('config: provider.address: set it, or the provider wallet: 0G session tokens name the provider');
  }
  // Backends with concurrency 0 are run by other replicas: this one validates and queues their jobs, and
  // neither calls nor health-checks them.
  const localBackends = config.backends.filter((b) => b.concurrency > 0);
  const backends: ReadonlyMap<string, ImageBackend> = options.backends
    ? new Map([...options.backends].filter(([id]) => localBackends.some((b) => b.id === id)))
    : new Map(localBackends.map((b) => [b.id, createBackend(b, { logger })]));
  const journal = new SettlementJournal(tee.journalDir, tee.address);
  // Its own registry (not prom-client's global one): two daemons in one process (tests) never share metrics.
  const metrics = new DaemonMetrics(new Registry());
  // From the config, not the backend objects: this replica may not run the backend (concurrency 0) whose
  // job it recovers after another replica died.
  const interruptedJobPolicy: InterruptedJobPolicy = (job) =>
    config.backends.find((b) => b.id === job.backendId)?.rerunInterruptedJobs === false ? 'fail' : 'rerun';
  const runner = new JobRunner({
    store,
    signals,
    replicaId,
    interruptedJobPolicy,
    blobs,
    backends,
    concurrency: new Map(localBackends.map((b) => [b.id, b.concurrency])),
    catalog,
    tee,
    receiptSeqFloor: (user) => journal.floorFor(user),
    providerAddress,
    jobs: config.jobs,
    maxOutputPixels: maxOutputPixels(config.limits),
    logger,
    now,
    onAttemptEnd: (backendId, outcome, ms) => metrics.observeAttempt(backendId, outcome, ms),
  });
  const presence = stores.replicaPresence({
    info: { id: replicaId, version: PIXELD_VERSION, signer: tee.address, backends: [...backends.keys()] },
    now,
    resultTtlMs: config.jobs.resultTtlMs,
    onError: (err) => logger.warn('replicas: could not update this replica\'s row', { error: String(err) }),
    onOrphansCancelled: (count, gone) =>
      logger.warn(`replicas: cancelled ${count} sync job(s) of replica(s) gone silent; their callers are gone`, { replicas: gone }),
  });
  try {
    await presence?.start();
  } catch (err) {
    await stores.close();
    if (err instanceof SignerMismatchError) throw new ConfigError(`config: ${err.message}`);
    throw err;
  }
  const service = new JobService({
    store,
    signals,
    replicaId,
    blobs,
    runner,
    jobs: config.jobs,
    maxQueuedJobs: new Map(config.backends.map((b) => [b.id, b.maxQueuedJobs])),
    logger,
    logPrompts: config.log.prompts,
    now,
  });
  const rateLimitBuckets = stores.rateLimitBuckets(config.rateLimits, now);
  const sweeper = new Sweeper({ store, blobs, rateLimitBuckets, interruptedJobPolicy, jobs: config.jobs, logger, now });
  let settler: Settler | undefined;
  let settlementChain: ChainClient | undefined;
  let settlementTriggers: SettlementTriggers | undefined;
  if (chainConfig && providerWallet) {
    if (!validateSettlementCron(config.billing.settlementCron)) {
      throw new ConfigError(`config: billing.settlementCron: "${config.billing.settlementCron}" is not a valid cron expression`);
    }
    // Its own client: the daemon's reuses identical reads for 250 ms, which settlement must never see.
    settlementChain = createChainClient({ ...chainConfig, freshReads: true });
    settler = new Settler({
      billing,
      chain: settlementChain,
      wallet: providerWallet,
      providerAddress,
      tee,
      billingConfig: config.billing,
      logger,
      now,
      onSettled: (users) => auth.zeroG?.forget(users),
    });
    settlementTriggers = createSettlementTriggers({
      settler,
      billing,
      chain: settlementChain,
      providerAddress,
      billingConfig: config.billing,
      logger,
    });
  } else {
    logger.info(
      chain
        ? `settlement is off: no provider wallet (set env ${config.provider.wallet.privateKeyEnv} or provider.wallet.keystoreFile); receipts are kept until it is`
        : 'settlement is off: the chain is not configured (chain.rpcUrl, chain.chainId, chain.servingAddress)',
    );
  }
  // Only 0G users are billed on chain; the guard's verdicts matter to nobody else.
  const priceGuard = config.auth.mode.includes('0g')
    ? createPriceGuard({
        chain: chain!,
        providerAddress,
        models: config.models,
        checkIntervalMs: config.billing.priceCheckIntervalMs,
        logger,
        now,
      })
    : undefined;
  const readiness = new Readiness({ store, backends, prices: priceGuard });
  const auth: Authenticators = {
    zeroG: config.auth.mode.includes('0g')
      ? new ZeroGAuthenticator({
          chain: chain!,
          providerAddress,
          chainCacheMs: config.auth.chainCacheMs,
          maxClockSkewMs: config.auth.maxClockSkewMs,
          now,
        })
      : undefined,
    apiKeys: config.auth.mode.includes('api-key') ? new ApiKeyRing(config.auth.apiKeys, env) : undefined,
  };
  const rateLimiter = new OwnerRateLimiter(rateLimitBuckets, logger);
  const attestation = new AttestationService({
    key: tee,
    providerAddress,
    modelIds: config.models.map((m) => m.id),
    cachedReportTtlMs: config.tee.cachedReportTtlMs,
    freshReportsPerMinute: config.tee.freshReportsPerMinute,
    freshReportsPerClientPerMinute: config.tee.freshReportsPerClientPerMinute,
    logger,
    now,
  });
  metrics.watch({
    store,
    billing,
    runner,
    settler,
    backendIds: config.backends.map((b) => b.id),
    info: { version: PIXELD_VERSION, signer: tee.address, teeMode: tee.mode, replica: replicaId },
  });
  const base64Images = new Base64Images(blobs);
  const webhookSecrets = WebhookSecrets.fromTeeKey(tee);
  const webhookPolicy = webhookAddressPolicy(config.webhooks.allowPrivate);
  const webhookNet = options.webhookResolver ? { ...options.webhookResolver, policy: webhookPolicy } : systemWebhookNet(webhookPolicy);
  const webhookWorker = new WebhookDeliveryWorker({
    store,
    secrets: webhookSecrets,
    images: base64Images,
    net: webhookNet,
    config: config.webhooks,
    logger,
    now,
    onAttemptEnd: (result, ms) => metrics.observeWebhookAttempt(result, ms),
  });
  const app = createApp({
    config,
    catalog,
    service,
    blobs,
    base64Images,
    readiness,
    attestation,
    auth,
    rateLimiter,
    billing,
    admission: new BillingAdmission(billing),
    priceGuard,
    logger,
    now,
    startedAtSeconds: Math.floor(now() / 1000),
    admin: {
      token: AdminToken.fromConfig(config.admin, env),
      runner,
      store,
      settler,
      replicaId,
      presence,
      dashboardSecret: teeDerivedSecret(tee, DASHBOARD_SESSION_SECRET_USE),
    },
    metrics,
    webhooks: new Webhooks({ secrets: webhookSecrets, net: webhookNet, config: config.webhooks }),
    webhookOutbox: store,
  });
  let server: Server | undefined;

  return {
    app,
    store,
    billing,
    runner,
    service,
    sweeper,
    webhookWorker,
    blobs,
    tee,
    settler,
    settlementTriggers,
    priceGuard,
    async start() {
      await runner.start();
      sweeper.start();
      webhookWorker.start();
      // Before the server listens: no 0G user is billed at a price the chain has not been compared with.
      await priceGuard?.start();
      if (settler) {
        // A crash may have left a batch between sending and recording: settle it against the chain before
        // any new round. An unreachable chain only postpones this to the first round.
        try {
          await settler.reconcile();
        } catch (err) {
          logger.error('settlement: start-up reconciliation failed; the next round retries it', { error: String(err) });
        }
        settlementTriggers!.start();
      }
    },
    listen() {
      return new Promise((resolve, reject) => {
        const s = app.listen(config.server.port, config.server.host, (err?: Error) => (err ? reject(err) : resolve(s)));
        // Large uploads on slow links take a while; the default 5 min would cut them off.
        s.requestTimeout = config.server.requestTimeoutMs;
        s.keepAliveTimeout = 65_000;
        server = s;
      });
    },
    async stop() {
      service.beginShutdown();
      await priceGuard?.stop();
      if (settler) {
        const triggersStopped = settlementTriggers!.stop();
        await settler.stop();
        await triggersStopped;
      }
      if (server) {
        const closing = new Promise<void>((resolve) => server!.close(() => resolve()));
        server.closeIdleConnections();
        await runner.stop();
        await sweeper.stop();
        await webhookWorker.stop();
        await presence?.stop();
        // Requests still open are answering (sync waiters with 503, long polls with the job's state);
        // give them a moment to finish before the remaining sockets are cut.
        const cut = setTimeout(() => server!.closeAllConnections(), 2_000);
        await closing;
        clearTimeout(cut);
      } else {
        await runner.stop();
        await sweeper.stop();
        await webhookWorker.stop();
        await presence?.stop();
      }
      await Promise.all([...backends.values()].map((b) => b.close?.()));
      chain?.close();
      settlementChain?.close();
      await notifications.close();
      await store.close();
    },
  };
}

export interface ServeOptions {
  configPath?: string | undefined;
}

/** `pixeld serve`: load config, start, and stop cleanly on SIGTERM/SIGINT. Returns the exit code. */
export async function serve(options: ServeOptions): Promise<number> {
  let loaded: LoadedConfig;
  try {
    loaded = loadConfig({ configPath: options.configPath });
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      return 2;
    }
    throw err;
  }
  const { config, source } = loaded;
  // Colour codes only where a terminal shows them, whatever log.format says: a file or a pipe gets plain text.
  const terminal = Boolean(process.stdout.isTTY);
  const logger = createLogger({ level: config.log.level, format: resolveLogFormat(config.log.format, terminal), colors: terminal });
  for (const warning of developmentWarnings(config)) logger.warn(warning);
  let daemon: Daemon;
  try {
    daemon = await createDaemon({ config, logger });
  } catch (err) {
    if (err instanceof TeeError || err instanceof ConfigError) {
      logger.error(err.message);
      return 2;
    }
    throw err;
  }
  await daemon.start();
  const server = await daemon.listen();
  const address = server.address();
  const where = typeof address === 'object' && address ? `http://${address.address}:${address.port}` : String(address);
  logger.info(`pixeld listening on ${where}`, {
    tee: daemon.tee.mode,
    signer: daemon.tee.address,
    config: source ?? 'built-in development defaults',
    dataDir: config.dataDir,
    models: config.models.map((m) => m.id),
  });

  return new Promise<number>((resolve) => {
    let stopping = false;
    const shutdown = (signal: string) => {
      if (stopping) return;
      stopping = true;
      logger.info(`received ${signal}; shutting down`);
      daemon.stop().then(
        () => resolve(0),
        (err: unknown) => {
          logger.error('shutdown failed', { error: String(err) });
          resolve(1);
        },
      );
    };
    process.once('SIGTERM', () => shutdown('SIGTERM'));
    process.once('SIGINT', () => shutdown('SIGINT'));
  });
}

/**
 * The configured replica name, or `<hostname>:<port>`: the same across restarts of one deployment. On an
 * ephemeral port (0) nothing stays the same; the process id at least tells two such replicas apart.
 */
export function replicaIdOf(config: Pick<Config, 'server'>): string {
  if (config.server.replicaId !== undefined) return config.server.replicaId;
  return config.server.port === 0 ? `${hostname()}:pid-${process.pid}` : `${hostname()}:${config.server.port}`;
}

/** Loud lines for settings that are fine on a laptop and wrong in front of paying users. */
export function developmentWarnings(config: Readonly<Config>): string[] {
  const warnings: string[] = [];
  if (config.auth.mode.length === 0) {
    warnings.push('DEVELOPMENT CONFIGURATION: auth.mode is "none" — anyone who can reach this port can use the GPU. Do not expose it.');
  }
  if (config.tee.mode === 'dev') {
    warnings.push('DEVELOPMENT CONFIGURATION: tee.mode is "dev" — the signing key is a plain file and nothing is attested (INSECURE-DEV).');
  }
  const reference = config.backends.filter((b) => b.type === 'reference').map((b) => b.id);
  if (reference.length > 0) {
    warnings.push(`DEVELOPMENT CONFIGURATION: backend(s) ${reference.join(', ')} are the built-in reference renderer, not a model.`);
  }
  return warnings;
}
