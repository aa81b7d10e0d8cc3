import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { ImageBackend } from '../../src/backends/types.js';
import { configSchema, DEVELOPMENT_DEFAULTS, type Config, type ConfigInput } from '../../src/config/schema.js';
import { createDaemon, type Daemon, type DaemonOptions } from '../../src/main.js';
import { createLogger, type Logger } from '../../src/obs/logger.js';
import type { TeeKeyProvider } from '../../src/tee/key-provider.js';
import { Writable } from 'node:stream';

export interface TestDaemon {
  url: string;
  daemon: Daemon;
  config: Config;
  dataDir: string;
  /** Every log line written so far, parsed. */
  logs: Array<Record<string, unknown>>;
  close(): Promise<void>;
}

export interface TestDaemonOptions {
  /** Merged over the development defaults (top-level keys replace, except nested objects which merge). */
  config?: Partial<ConfigInput>;
  backends?: ReadonlyMap<string, ImageBackend>;
  dataDir?: string;
  /** Leave the runner and sweeper stopped. */
  noStart?: boolean;
  now?: () => number;
  /** Replaces the key provider `tee.mode` names (a fake TEE). */
  tee?: TeeKeyProvider;
  /** Environment the provider wallet and API keys are read from. @default process.env */
  env?: NodeJS.ProcessEnv;
  /** The resolver and CAs webhooks use (the addresses allowed stay the config's). */
  webhookResolver?: DaemonOptions['webhookResolver'];
}

export function tempDir(prefix = 'pixeld-test-'): string {
  return mkdtempSync(path.join(tmpdir(), prefix));
}

export function testConfig(overrides: Partial<ConfigInput> = {}, dataDir = tempDir()): Config {
  const input: ConfigInput = {
    ...DEVELOPMENT_DEFAULTS,
    ...overrides,
    dataDir,
    server: { host: '127.0.0.1', port: 0, ...(overrides.server ?? {}) },
    jobs: { retryBackoffMs: 10, sweepIntervalMs: 3_600_000, ...(overrides.jobs ?? {}) },
  };
  return configSchema.parse(input);
}

/** A daemon on a temp dir and an ephemeral loopback port, built exactly as `pixeld serve` builds it. */
export async function startTestDaemon(options: TestDaemonOptions = {}): Promise<TestDaemon> {
  const ownDir = options.dataDir === undefined;
  const dataDir = options.dataDir ?? tempDir();
  const config = testConfig(options.config, dataDir);
  const logs: Array<Record<string, unknown>> = [];
  const logger: Logger = createLogger({
    level: 'debug',
    stream: new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString().split('\n')) if (line.trim()) logs.push(JSON.parse(line) as Record<string, unknown>);
        done();
      },
    }),
  });
  const daemon = await createDaemon({
    config,
    logger,
    backends: options.backends,
    tee: options.tee,
    now: options.now,
    env: options.env,
    webhookResolver: options.webhookResolver,
  });
  if (!options.noStart) await daemon.start();
  const server = await daemon.listen();
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    daemon,
    config,
    dataDir,
    logs,
    async close() {
      await daemon.stop();
      if (ownDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
