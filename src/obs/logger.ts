import winston from 'winston';

export type Logger = winston.Logger;

/** How lines are written: one JSON object per line for machines, or a readable line for a person. */
export type LogFormat = 'json' | 'pretty';

export interface CreateLoggerOptions {
  level: string;
  /** @default 'json' */
  format?: LogFormat;
  /** Colour the level of pretty lines (ANSI codes): only for a terminal. @default false */
  colors?: boolean;
  /** Where lines go instead of stdout; tests capture lines with it, commands send them to stderr. */
  stream?: NodeJS.WritableStream;
}

/** `log.format: auto` is pretty on a terminal and JSON lines everywhere else (a container, a pipe, a file). */
export function resolveLogFormat(setting: 'auto' | LogFormat, isTTY: boolean): LogFormat {
  if (setting !== 'auto') return setting;
  return isTTY ? 'pretty' : 'json';
}

export function createLogger(options: CreateLoggerOptions): Logger {
  const format =
    options.format === 'pretty'
      ? winston.format.combine(
          winston.format.timestamp(),
          ...(options.colors ? [winston.format.colorize({ level: true })] : []),
          winston.format.printf(prettyLine),
        )
      : winston.format.combine(winston.format.timestamp(), jsonLine());
  const transport = options.stream
    ? new winston.transports.Stream({ stream: options.stream })
    : new winston.transports.Console({ stderrLevels: [] });
  return winston.createLogger({ level: options.level, format, transports: [transport] });
}

/** Where winston's transports read the finished line (triple-beam's MESSAGE). */
const MESSAGE = Symbol.for('message');

/**
 * One JSON object per line. winston's own json format configures safe-stable-stringify anew for every line,
 * which made a request line cost as much as a sixth of a pending poll (bench poll-throughput); one native
 * JSON.stringify is a fraction of it. Bigints are written as decimal strings, as winston's format does; a
 * value that cannot be serialised (a cycle) costs its fields, never the line or the process.
 */
const jsonLine = winston.format((info) => {
  try {
    (info as unknown as Record<symbol, string>)[MESSAGE] = JSON.stringify(info, bigintAsString);
  } catch (err) {
    const { level, message, timestamp } = info;
    (info as unknown as Record<symbol, string>)[MESSAGE] = JSON.stringify({ level, message, timestamp, logError: `fields not serialisable: ${(err as Error).message}` });
  }
  return info;
});

function bigintAsString(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? value.toString() : value;
}

/** `2026-12-04T16:55:00.123Z info job started jobId=… attempt=1`: the ids a person greps for, as key=value. */
function prettyLine(info: winston.Logform.TransformableInfo): string {
  const { level, message, timestamp, ...rest } = info;
  let line = `${String(timestamp)} ${level} ${String(message)}`;
  for (const [key, value] of Object.entries(rest)) {
    if (value === undefined) continue;
    line += ` ${key}=${typeof value === 'string' && /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value)}`;
  }
  return line;
}

/** A logger that drops everything; for unit tests that do not look at logs. */
export function silentLogger(): Logger {
  return winston.createLogger({ silent: true, transports: [new winston.transports.Console({ silent: true })] });
}
