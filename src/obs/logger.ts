import winston from 'winston';

export type Logger = winston.Logger;

export interface CreateLoggerOptions {
  level: string;
  /** JSON lines for machines (default), or a readable single line for a terminal. */
  format?: 'json' | 'pretty';
  /** Extra transport, used by tests to capture log lines. */
  stream?: NodeJS.WritableStream;
}

export function createLogger(options: CreateLoggerOptions): Logger {
  const format =
    options.format === 'pretty'
      ? winston.format.combine(
          winston.format.timestamp(),
          winston.format.printf(({ level, message, timestamp, ...rest }) => {
            const extra = Object.keys(rest).length > 0 ? ` ${JSON.stringify(rest)}` : '';
            return `${String(timestamp)} ${level.toUpperCase()} ${String(message)}${extra}`;
          }),
        )
      : winston.format.combine(winston.format.timestamp(), winston.format.json());
  const transport = options.stream
    ? new winston.transports.Stream({ stream: options.stream })
    : new winston.transports.Console({ stderrLevels: [] });
  return winston.createLogger({ level: options.level, format, transports: [transport] });
}

/** A logger that drops everything; for unit tests that do not look at logs. */
export function silentLogger(): Logger {
  return winston.createLogger({ silent: true, transports: [new winston.transports.Console({ silent: true })] });
}
