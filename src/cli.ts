import { parseArgs } from 'node:util';

const HELP = `pixeld — provider daemon for image models (OpenAI-compatible image API, async jobs)

Usage: pixeld <command> [options]

Commands:
  serve            Run the daemon (the default when no command is given)
  verify           Check a job's images and signatures against the daemon's attestation
                   (pixeld verify --help for details)
  register         Register or update this provider's service on chain (pixeld register --help)
  service          Show the on-chain service and how it compares with the local config
  settle           Settle unsettled receipts on chain now, one round (pixeld settle --help)
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
  Exit status 0 only when every check passes.

register options:
  --model <id>        The model to publish (required when several are configured)
  --url <url>         Public base URL (default: provider.service.url)
  --yes, -y           Do not ask before a change that resets the TEE acknowledgement
  --dry-run           Show the change and send nothing
  Needs chain.* and the provider wallet (env PIXELD_PROVIDER_KEY or provider.wallet.keystoreFile).

service options:
  --model <id>        Compare with this model (default: the on-chain one, else the only one)

settle options:
  --dry-run           Prepare, sign and preview only: nothing persisted or sent
  Exit status 1 when another settler holds the lock, the chain fails, or an item is not settled.

Environment:
  PORT, HOST, PIXELD_DATA_DIR, PIXELD_CONFIG, PIXELD_PUBLIC_BASE_URL, PIXELD_LOG_LEVEL
  override the matching config keys (see config/pixeld.example.yaml).
`;

async function main(argv: string[]): Promise<number> {
  // verify has options of its own, and must not load the daemon (SQLite, sharp) on a client's machine.
  if (argv[0] === 'verify') {
    const { runVerifyCommand } = await import('./tee/verify-command.js');
    return runVerifyCommand(argv.slice(1));
  }
  // register and service have options of their own; like verify they never load the daemon.
  if (argv[0] === 'register') {
    const { runRegisterCli } = await import('./commands/register.js');
    return runRegisterCli(argv.slice(1));
  }
  if (argv[0] === 'service') {
    const { runServiceCli } = await import('./commands/service.js');
    return runServiceCli(argv.slice(1));
  }
  if (argv[0] === 'settle') {
    const { runSettleCli } = await import('./commands/settle.js');
    return runSettleCli(argv.slice(1));
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } },
    });
  } catch (err) {
    console.error(`pixeld: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  const [command = 'serve', ...rest] = parsed.positionals;
  if (parsed.values.help || command === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  if (rest.length > 0) {
    console.error(`pixeld: unexpected argument "${rest[0]}"`);
    return 2;
  }
  switch (command) {
    case 'serve': {
      const { serve } = await import('./main.js');
      return serve({ configPath: parsed.values.config });
    }
    case 'register': {
      const { runRegisterCli } = await import('./commands/register.js');
      return runRegisterCli(parsed.values.config === undefined ? [] : ['--config', parsed.values.config]);
    }
    case 'service': {
      const { runServiceCli } = await import('./commands/service.js');
      return runServiceCli(parsed.values.config === undefined ? [] : ['--config', parsed.values.config]);
    }
    case 'settle': {
      const { runSettleCli } = await import('./commands/settle.js');
      return runSettleCli(parsed.values.config === undefined ? [] : ['--config', parsed.values.config]);
    }
    default:
      console.error(`pixeld: unknown command "${command}"\n\n${HELP}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`pixeld: ${(err as Error)?.stack ?? String(err)}`);
    process.exit(1);
  },
);
