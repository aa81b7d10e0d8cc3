import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import {
  commandOutput,
  EXIT_FAILED,
  EXIT_OK,
  EXIT_USAGE,
  OUTPUT_FLAGS,
  OUTPUT_USAGE,
  processIo,
  type CommandIo,
  type OutputOptions,
} from './command-io.js';
import { chainChecks } from './doctor/chain-checks.js';
import { runChecks, type CheckGroup, type CheckResult, type CheckStatus, type DoctorState } from './doctor/check.js';
import { backendChecks, storageChecks } from './doctor/local-checks.js';
import { teeChecks } from './doctor/tee-checks.js';

/**
 * `pixeld doctor`: every check a provider needs to trust a set-up — config, storage, backends, TEE, the
 * running daemon, the chain, the service and what is owed — one line each with a fix for what fails.
 * Reads only: it never creates a key, applies a migration or sends a transaction (the data dir check
 * creates dataDir if missing, and writes and removes one file).
 *
 * Exit status: 0 no check failed (warnings allowed), 1 a check failed, 2 bad arguments.
 */

export const DOCTOR_USAGE = `Usage: pixeld doctor [--config <file>] [--url <daemon>] [--no-generation] [--json] [--quiet]

Checks this provider's set-up, one line per check (✓ pass, ⚠ warning, ✗ fail, – skipped because a check
it depends on did not pass), with a fix for every ✗ and ⚠: the config; the data dir and free space; the
database schema; each backend (reachable, and one tiny image through the daemon's own adapter); the TEE mode
and key; the running daemon (it answers, and attests its signer with a quote over a fresh nonce); the RPC
and chain id; the service on chain (registered, url, model, price, signer, acknowledgement); the provider
wallet's gas; the unsettled fees and the next settlement round.

  --url <url>         The running daemon (default: provider.service.url, else http://<server.host>:<server.port>)
  --no-generation     Check that each backend answers, without asking it for an image
${OUTPUT_USAGE}
  -c, --config <file> Config file (default: $PIXELD_CONFIG, else config/pixeld.yaml); use the daemon's

--json prints {"ok", "checks": [{"id", "group", "status", "summary", "hint"?}]}, status one of pass, warn,
fail, skip; meanwhile each check's mark and title go to stderr as it ends.

Exit status: 0 nothing failed (warnings allowed), 1 a check failed, 2 bad arguments.
`;

export interface DoctorOptions extends OutputOptions {
  configPath?: string | undefined;
  /** The running daemon's base URL. */
  url?: string | undefined;
  /** Ask each backend for an image. @default true */
  generation?: boolean | undefined;
  /** How long one check may take, unless it sets its own (a generation takes jobs.attemptTimeoutMs). @default 15_000 */
  checkTimeoutMs?: number | undefined;
}

/** What --json prints. */
export interface DoctorReport {
  ok: boolean;
  checks: CheckResult[];
}

const MARKS: Record<CheckStatus, string> = { pass: '✓', warn: '⚠', fail: '✗', skip: '–' };
const GROUP_TITLES: Record<CheckGroup, string> = {
  config: 'Config',
  storage: 'Storage',
  backends: 'Backends',
  tee: 'TEE',
  daemon: 'Running daemon',
  chain: 'Chain and service',
  billing: 'Billing',
};

export async function doctor(options: DoctorOptions, io: Pick<CommandIo, 'stdout' | 'stderr' | 'env'>): Promise<number> {
  const state: DoctorState = { env: io.env, cleanups: [] };
  const output = commandOutput(io, options);
  let group: CheckGroup | undefined;
  const print = (result: CheckResult, title: string) => {
    // The human report streams as checks end, so it is its own progress; under --json stderr carries it.
    if (options.json) output.progress(`${MARKS[result.status]} ${title}`);
    if (result.group !== group) {
      if (group !== undefined) output.line('');
      group = result.group;
      output.line(GROUP_TITLES[group]);
    }
    output.line(`  ${MARKS[result.status]} ${title}: ${result.summary}`);
    if (result.hint && (result.status === 'fail' || result.status === 'warn')) output.line(`      fix: ${result.hint}`);
  };

  const results: CheckResult[] = [];
  try {
    const configResult = checkConfig(options.configPath, state);
    results.push(configResult);
    print(configResult, 'config');
    const config = state.config;
    if (config) {
      state.daemonUrl = daemonUrlOf(options.url, config);
      const checks = [
        ...storageChecks(),
        ...backendChecks(config, { generation: options.generation ?? true }),
        ...teeChecks(),
        ...chainChecks(config),
      ];
      results.push(...(await runChecks(checks, state, { checkTimeoutMs: options.checkTimeoutMs ?? 15_000, onResult: print })));
    }
  } finally {
    for (const cleanup of state.cleanups.reverse()) await Promise.resolve(cleanup()).catch(() => undefined);
  }

  const ok = results.every((r) => r.status !== 'fail');
  output.result({ ok, checks: results } satisfies DoctorReport);
  const count = (s: CheckStatus) => results.filter((r) => r.status === s).length;
  output.line('');
  output.line(`${count('pass')} passed, ${count('warn')} warning(s), ${count('fail')} failed, ${count('skip')} skipped`);
  return ok ? EXIT_OK : EXIT_FAILED;
}

function checkConfig(configPath: string | undefined, state: DoctorState): CheckResult {
  const base = { id: 'config', group: 'config' as const };
  try {
    const loaded = loadConfig({ configPath, env: state.env });
    state.config = loaded.config;
    const from = loaded.source ?? 'no file: the built-in development defaults';
    return { ...base, status: 'pass', summary: `valid (${from})` };
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return {
      ...base,
      status: 'fail',
      summary: err.message.replace(/^config: /, ''),
      hint: 'correct what the message names (config/pixeld.example.yaml documents every key; --config or PIXELD_CONFIG names the file); every other check needs a valid config',
    };
  }
}

/** --url, else the public URL routers call, else where this config makes the daemon listen. */
function daemonUrlOf(url: string | undefined, config: Readonly<Config>): string {
  const chosen = url ?? config.provider.service.url;
  if (chosen !== undefined) return chosen.replace(/\/+$/, '');
  const { host, port } = config.server;
  const local = host === '0.0.0.0' || host === '::' || host === '' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
  return `http://${local}:${port}`;
}

/** `pixeld doctor …` from the command line. */
export async function runDoctorCli(argv: string[], io: Pick<CommandIo, 'stdout' | 'stderr' | 'env'> = processIo()): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      options: {
        config: { type: 'string', short: 'c' },
        url: { type: 'string' },
        'no-generation': { type: 'boolean' },
        ...OUTPUT_FLAGS,
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    io.stderr(`pixeld doctor: ${(err as Error).message}\n\n${DOCTOR_USAGE}`);
    return EXIT_USAGE;
  }
  if (values.help) {
    io.stdout(DOCTOR_USAGE);
    return EXIT_OK;
  }
  if (values.url !== undefined && !/^https?:\/\/[^/]/.test(values.url)) {
    io.stderr(`pixeld doctor: --url ${values.url}: must be an http(s) URL, e.g. http://127.0.0.1:8080\n\n${DOCTOR_USAGE}`);
    return EXIT_USAGE;
  }
  return doctor(
    { configPath: values.config, url: values.url, generation: !values['no-generation'], json: values.json, quiet: values.quiet },
    io,
  );
}
