import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { configSchema, DEVELOPMENT_DEFAULTS, type Config, type ConfigInput } from './schema.js';

/** A configuration that cannot be used; its message is one line naming the key. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export interface LoadConfigOptions {
  /** Path given on the command line; wins over PIXELD_CONFIG. */
  configPath?: string | undefined;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface LoadedConfig {
  config: Readonly<Config>;
  /** The file read, or undefined when running on the built-in development defaults. */
  source: string | undefined;
}

/** The file looked for when neither --config nor PIXELD_CONFIG names one. */
export const DEFAULT_CONFIG_PATH = 'config/pixeld.yaml';

export function loadConfig(options: LoadConfigOptions = {}): LoadedConfig {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const explicit = options.configPath ?? env.PIXELD_CONFIG;
  let source: string | undefined;
  let raw: Record<string, unknown> = {};

  if (explicit !== undefined && explicit !== '') {
    source = path.resolve(cwd, explicit);
    if (!existsSync(source)) throw new ConfigError(`config: file not found: ${source}`);
  } else if (existsSync(path.resolve(cwd, DEFAULT_CONFIG_PATH))) {
    source = path.resolve(cwd, DEFAULT_CONFIG_PATH);
  }
  if (source !== undefined) raw = readConfigFile(source);

  const input: ConfigInput = {
    ...raw,
    // A file that names no backends and models runs the built-in reference model.
    backends: (raw.backends as ConfigInput['backends'] | undefined) ?? DEVELOPMENT_DEFAULTS.backends,
    models: (raw.models as ConfigInput['models'] | undefined) ?? DEVELOPMENT_DEFAULTS.models,
  };
  applyEnvOverrides(input, env);

  const parsed = configSchema.safeParse(input);
  if (!parsed.success) throw new ConfigError(`config: ${describeIssue(parsed.error.issues[0]!)}`);
  const config = parsed.data;
  config.dataDir = path.resolve(cwd, config.dataDir);
  return { config: deepFreeze(config), source };
}

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`config: cannot read ${file}: ${(err as Error).message}`);
  }
  let value: unknown;
  try {
    value = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new ConfigError(`config: ${file} is not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`);
  }
  if (value === null || value === undefined) return {};
  if (typeof value !== 'object' || Array.isArray(value)) throw new ConfigError(`config: ${file} must hold an object at the top level`);
  return value as Record<string, unknown>;
}

/** Env wins over the file for the settings operators change per deployment. */
function applyEnvOverrides(input: ConfigInput, env: NodeJS.ProcessEnv): void {
  const server = { ...(input.server ?? {}) } as Record<string, unknown>;
  if (env.PORT !== undefined && env.PORT !== '') server.port = envInteger('PORT', env.PORT);
  if (env.HOST !== undefined && env.HOST !== '') server.host = env.HOST;
  if (env.PIXELD_PUBLIC_BASE_URL) server.publicBaseUrl = env.PIXELD_PUBLIC_BASE_URL;
  if (env.PIXELD_REPLICA_ID) server.replicaId = env.PIXELD_REPLICA_ID;
  input.server = server as ConfigInput['server'];
  if (env.PIXELD_DATA_DIR) input.dataDir = env.PIXELD_DATA_DIR;
  if (env.PIXELD_DATABASE_URL) input.database = { ...(input.database ?? {}), url: env.PIXELD_DATABASE_URL };
  if (env.PIXELD_LOG_LEVEL) input.log = { ...(input.log ?? {}), level: env.PIXELD_LOG_LEVEL as 'info' };
  if (env.PIXELD_LOG_FORMAT) input.log = { ...(input.log ?? {}), format: env.PIXELD_LOG_FORMAT as 'auto' };
}

function envInteger(name: string, value: string): number {
  if (!/^\d+$/.test(value)) throw new ConfigError(`config: env ${name} must be a whole number, got "${value}"`);
  return Number(value);
}

function describeIssue(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') {
    // Name the unknown key itself (`server.bogus`), not only the object holding it.
    const [first, ...others] = issue.keys;
    const also = others.length > 0 ? ` (also: ${others.join(', ')})` : '';
    return `${[...issue.path, first].map(String).join('.')}: unknown key${also}`;
  }
  const key = issue.path.length > 0 ? issue.path.map(String).join('.') : '(top level)';
  return `${key}: ${issue.message}`;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value as Record<string, unknown>)) deepFreeze(child);
  }
  return value;
}
