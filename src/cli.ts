import { parseArgs } from 'node:util';
import { serve } from './main.js';

const HELP = `pixeld — provider daemon for image models (OpenAI-compatible image API, async jobs)

Usage: pixeld <command> [options]

Commands:
  serve            Run the daemon (the default when no command is given)
  help             Show this help

Options:
  -c, --config <path>   Config file (YAML or JSON). Default: $PIXELD_CONFIG, else config/pixeld.yaml
                        if present, else the built-in development defaults.
  -h, --help            Show this help

Environment:
  PORT, HOST, PIXELD_DATA_DIR, PIXELD_CONFIG, PIXELD_PUBLIC_BASE_URL, PIXELD_LOG_LEVEL
  override the matching config keys (see config/pixeld.example.yaml).
`;

async function main(argv: string[]): Promise<number> {
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
    case 'serve':
      return serve({ configPath: parsed.values.config });
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
