import { parseArgs } from 'node:util';

const HELP = `pixeld — provider daemon for image models (OpenAI-compatible image API, async jobs)

Usage: pixeld <command> [options]

Commands:
  serve            Run the daemon (the default when no command is given)
  verify           Check a job's images and signatures against the daemon's attestation
                   (pixeld verify --help for details)
  verify-charge    Check an on-chain settlement against the receipts behind it
                   (pixeld verify-charge --help for details)
  measurements     The compose hash a verifier should pin for a dstack app-compose.json, and
                   the image digest of a Docker build (an OCI layout)
                   (pixeld measurements --help)
  register         Register or update this provider's service on chain (pixeld register --help)
  service          Show the on-chain service and how it compares with the local config
  settle           Settle unsettled receipts on chain now, one round (pixeld settle --help)
  accounts         Users' on-chain balances next to their unsettled and reserved fees
  earnings         Receipts per day: settled, settled short, unsettled, off chain
  jobs             The newest jobs, by status, user or model, a page at a time (pixeld jobs --help)
  job              What happened to one job: timeline, attempts, images, receipt, settlement (pixeld job --help)
  migrate          Apply the missing schema migrations to the configured database (pixeld migrate --help)
  doctor           Check config, storage, backends, TEE, the running daemon, chain, service and gas,
                   one line each with a fix (pixeld doctor --help)
  help             Show this help

Options:
  -c, --config <path>   Config file (YAML or JSON). Default: $PIXELD_CONFIG, else config/pixeld.yaml
                        if present, else the built-in development defaults.
  -h, --help            Show this help

verify options:
  --url <daemon> --job <id> --request <file>   The daemon, the job id (ZG-Res-Key), the request body as sent
  --response <file> | --image <file> ...       The JSON response received, or each image file as received
  --model <id>  --signer <0x...>               Fail unless the receipt names this model / this attested signer
  --collateral <file>  --pccs <url>            Quote collateral to verify offline, or the PCCS to fetch it from
  --now <unix seconds>                         Time the collateral must be valid at (default: now)
  --allow-insecure                             Accept a dev-mode daemon (nothing attested) and check the rest
  --measurements <file>                        Expected {mrtd, rtmr0..3, composeHash, appId} (JSON, hex)
  --expect-mrtd <hex>  --expect-rtmr0..3 <hex> Expected registers; any difference fails
  --expect-compose-hash <hex> --expect-app-id <hex>  dstack: checked in the event log replayed to the quote
  --expect-kms-root <address|key>              dstack: the KMS root the key's signature chain must lead to
  Unpinned measurements pass only with a warning: nothing then proves which code ran.
  Exit status 0 only when every check passes.

register options:
  --model <id>        The model to publish (required when several are configured)
  --url <url>         Public base URL (default: provider.service.url)
  --yes, -y           Do not ask before a change that resets the TEE acknowledgement
  --dry-run           Show the change and send nothing
  --json              One JSON object on stdout at the end; never asks (a reset needs --yes)
  Needs chain.* and the provider wallet (env PIXELD_PROVIDER_KEY or provider.wallet.keystoreFile).

service options:
  --model <id>        Compare with this model (default: the on-chain one, else the only one)

settle options:
  --dry-run           Prepare, sign and preview only: nothing persisted or sent
  Exit status 1 when another settler holds the lock, the chain fails, or an item is not settled.

doctor options:
  --url <daemon>      The running daemon (default: provider.service.url, else the listen address)
  --no-generation     Check each backend answers without asking it for an image
  --json, --quiet     One JSON object {ok, checks:[{id, group, status, summary, hint?}]} / no progress
  Exit status 1 when a check fails (✗), 2 for bad arguments.

settle, register, migrate, service, accounts, earnings, jobs, job:
  --json              One JSON object on stdout at the end (wei and nonces as decimal strings)
  -q, --quiet         No progress lines (each step goes to stderr as it happens)

Environment:
  PORT, HOST, PIXELD_DATA_DIR, PIXELD_DATABASE_URL, PIXELD_CONFIG, PIXELD_PUBLIC_BASE_URL, PIXELD_LOG_LEVEL,
  PIXELD_LOG_FORMAT
  override the matching config keys (see config/pixeld.example.yaml).
`;

type CommandRunner = (argv: string[]) => Promise<number>;

/**
 * Every command but serve parses its own options and is loaded only when run: verify, register and
 * service never load the daemon (SQLite, sharp) on a client's machine.
 */
const COMMANDS: Record<string, CommandRunner> = {
  serve: async (argv) => {
    const { values } = parseArgs({ args: argv, allowPositionals: false, options: { config: { type: 'string', short: 'c' } } });
    const { serve } = await import('./main.js');
    return serve({ configPath: values.config });
  },
  verify: async (argv) => (await import('./tee/verify-command.js')).runVerifyCommand(argv),
  'verify-charge': async (argv) => (await import('./commands/verify-charge.js')).runVerifyChargeCli(argv),
  measurements: async (argv) => (await import('./tee/measurements-command.js')).runMeasurementsCommand(argv),
  register: async (argv) => (await import('./commands/register.js')).runRegisterCli(argv),
  service: async (argv) => (await import('./commands/service.js')).runServiceCli(argv),
  settle: async (argv) => (await import('./commands/settle.js')).runSettleCli(argv),
  accounts: async (argv) => (await import('./commands/ledger.js')).runLedgerCli('accounts', argv),
  earnings: async (argv) => (await import('./commands/ledger.js')).runLedgerCli('earnings', argv),
  jobs: async (argv) => (await import('./commands/jobs.js')).runJobsCli(argv),
  job: async (argv) => (await import('./commands/jobs.js')).runJobCli(argv),
  migrate: async (argv) => (await import('./commands/migrate.js')).runMigrateCli(argv),
  doctor: async (argv) => (await import('./commands/doctor.js')).runDoctorCli(argv),
};

async function main(argv: string[]): Promise<number> {
  // `pixeld -c file <command> …` is the same as `pixeld <command> -c file …`.
  let args = [...argv];
  const globalConfig: string[] = [];
  while (args[0] === '-c' || args[0] === '--config' || args[0]?.startsWith('--config=')) {
    const flag = args.shift()!;
    if (flag.startsWith('--config=')) globalConfig.push('--config', flag.slice('--config='.length));
    else if (args[0] !== undefined) globalConfig.push('--config', args.shift()!);
    else {
      console.error(`pixeld: ${flag} needs a file\n\n${HELP}`);
      return 2;
    }
  }
  const first = args[0];
  if (first === '-h' || first === '--help' || first === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  const command = first === undefined || first.startsWith('-') ? 'serve' : first;
  if (first !== undefined && !first.startsWith('-')) args = args.slice(1);
  const run = COMMANDS[command];
  if (!run) {
    console.error(`pixeld: unknown command "${command}"\n\n${HELP}`);
    return 2;
  }
  try {
    return await run([...globalConfig, ...args]);
  } catch (err) {
    if ((err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      console.error(`pixeld ${command}: ${(err as Error).message}\n\n${HELP}`);
      return 2;
    }
    throw err;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`pixeld: ${(err as Error)?.stack ?? String(err)}`);
    process.exit(1);
  },
);
