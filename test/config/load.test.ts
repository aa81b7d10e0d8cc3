import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, type LoadConfigOptions } from '../../src/config/load.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

let dir: string;

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'pixeld-config-'));
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function write(name: string, text: string): string {
  const file = path.join(dir, name);
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, text);
  return file;
}

/** loadConfig in the temp dir with an empty environment unless the test gives one. */
function load(options: LoadConfigOptions = {}) {
  return loadConfig({ env: {}, cwd: dir, ...options });
}

/** The ConfigError loadConfig throws; fails the test when it does not throw one. */
function configError(options: LoadConfigOptions): ConfigError {
  try {
    load(options);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    const error = err as ConfigError;
    expect(error.name).toBe('ConfigError');
    expect(error.message).not.toContain('\n');
    expect(error.message).toMatch(/^config: /);
    return error;
  }
  throw new Error('loadConfig did not throw');
}

const MODEL_YAML = `
backends:
  - id: gpu
    type: reference
    concurrency: 3
models:
  - id: flux-dev
    backend: gpu
    capabilities: [generation, edit]
    sizes: [512x512, 1024x1024]
    defaultSize: 1024x1024
    maxN: 2
`;

describe('loadConfig: defaults', () => {
  it('without a file runs the built-in reference backend on port 8080 with ./data resolved', () => {
    const { config, source } = load();
    expect(source).toBeUndefined();
    expect(config.server.port).toBe(8080);
    expect(config.server.host).toBe('127.0.0.1');
    expect(config.dataDir).toBe(path.join(dir, 'data'));
    expect(path.isAbsolute(config.dataDir)).toBe(true);
    expect(config.backends.map((b) => [b.id, b.type])).toEqual([['reference', 'reference']]);
    expect(config.models.map((m) => m.id)).toEqual(['reference-image-1']);
    expect(config.models[0]!.backend).toBe('reference');
    expect(config.log.level).toBe('info');
    expect(config.limits.maxPromptChars).toBe(32_000);
    expect(config.limits.maxInputImages).toBe(16);
    expect(config.server.maxBodyBytes).toBe(100 * 1024 * 1024);
  });

  it('refuses job records kept for less time than their results: a signature must outlive its images', () => {
    const file = write('short.yaml', `${MODEL_YAML}\njobs:\n  resultTtlMs: 3600000\n  recordRetentionMs: 60000\n`);
    expect(configError({ configPath: file }).message).toMatch(/jobs\.recordRetentionMs: must be at least jobs\.resultTtlMs \(3600000\)/);
  });

  it('returns a frozen config', () => {
    const { config } = load();
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.server)).toBe(true);
    expect(Object.isFrozen(config.models[0]!.sizes)).toBe(true);
    expect(() => {
      (config.server as { port: number }).port = 1;
    }).toThrow(TypeError);
  });

  it('reads config/pixeld.yaml from the working directory when nothing names a file', () => {
    const file = write('config/pixeld.yaml', 'server:\n  port: 7001\n');
    const { config, source } = load();
    expect(source).toBe(file);
    expect(config.server.port).toBe(7001);
    // A file without backends and models runs the built-in reference model.
    expect(config.models.map((m) => m.id)).toEqual(['reference-image-1']);
  });

  it('an empty file is the defaults', () => {
    const file = write('empty.yaml', '');
    const { config, source } = load({ configPath: file });
    expect(source).toBe(file);
    expect(config.server.port).toBe(8080);
  });
});

describe('loadConfig: files', () => {
  it('reads YAML', () => {
    const file = write('pixeld.yaml', `server:\n  port: 9001\n  host: 0.0.0.0\ndataDir: /srv/pixeld\nlog:\n  level: debug\n${MODEL_YAML}`);
    const { config, source } = load({ configPath: file });
    expect(source).toBe(file);
    expect(config.server).toMatchObject({ port: 9001, host: '0.0.0.0' });
    expect(config.dataDir).toBe('/srv/pixeld');
    expect(config.log.level).toBe('debug');
    expect(config.backends).toEqual([expect.objectContaining({ id: 'gpu', type: 'reference', concurrency: 3, maxImagesPerCall: 4 })]);
    expect(config.models[0]).toMatchObject({ id: 'flux-dev', backend: 'gpu', maxN: 2, defaultSize: '1024x1024', pricePerImageWei: 0n });
  });

  it('reads JSON', () => {
    const file = write(
      'pixeld.json',
      JSON.stringify({
        server: { port: 9002 },
        dataDir: 'state',
        backends: [{ id: 'up', type: 'openai', baseUrl: 'http://127.0.0.1:30000/v1' }],
        models: [{ id: 'm', backend: 'up', capabilities: ['edit'], sizes: ['1024x1024'], pricePerImageWei: '1000000000000' }],
      }),
    );
    const { config, source } = load({ configPath: file });
    expect(source).toBe(file);
    expect(config.server.port).toBe(9002);
    expect(config.dataDir).toBe(path.join(dir, 'state'));
    expect(config.backends[0]).toMatchObject({ id: 'up', type: 'openai', flavor: 'generic', connectTimeoutMs: 10_000 });
    expect(config.models[0]!.pricePerImageWei).toBe(1_000_000_000_000n);
  });

  it('a relative --config path is resolved against the working directory', () => {
    write('conf/p.yaml', 'server:\n  port: 9003\n');
    const { config, source } = load({ configPath: 'conf/p.yaml' });
    expect(source).toBe(path.join(dir, 'conf/p.yaml'));
    expect(config.server.port).toBe(9003);
  });
});

describe('loadConfig: environment', () => {
  it('PORT, HOST, PIXELD_DATA_DIR and PIXELD_LOG_LEVEL override the file', () => {
    const file = write('pixeld.yaml', 'server:\n  port: 9001\n  host: 127.0.0.1\ndataDir: /srv/a\nlog:\n  level: warn\n');
    const { config } = load({
      configPath: file,
      env: { PORT: '9100', HOST: '0.0.0.0', PIXELD_DATA_DIR: 'var/data', PIXELD_LOG_LEVEL: 'debug' },
    });
    expect(config.server.port).toBe(9100);
    expect(config.server.host).toBe('0.0.0.0');
    expect(config.dataDir).toBe(path.join(dir, 'var/data'));
    expect(config.log.level).toBe('debug');
  });

  it('keeps the file values (and other server keys) when the env vars are unset or empty', () => {
    const file = write('pixeld.yaml', 'server:\n  port: 9001\n  maxBodyBytes: 2048\n');
    const { config } = load({ configPath: file, env: { PORT: '', HOST: '' } });
    expect(config.server.port).toBe(9001);
    expect(config.server.host).toBe('127.0.0.1');
    expect(config.server.maxBodyBytes).toBe(2048);
  });

  it('PIXELD_CONFIG names the file', () => {
    const file = write('from-env.yaml', 'server:\n  port: 9200\n');
    const { config, source } = load({ env: { PIXELD_CONFIG: file } });
    expect(source).toBe(file);
    expect(config.server.port).toBe(9200);
  });

  it('--config wins over PIXELD_CONFIG', () => {
    const fromEnv = write('from-env.yaml', 'server:\n  port: 9200\n');
    const fromFlag = write('from-flag.yaml', 'server:\n  port: 9300\n');
    const { config, source } = load({ configPath: fromFlag, env: { PIXELD_CONFIG: fromEnv } });
    expect(source).toBe(fromFlag);
    expect(config.server.port).toBe(9300);
  });

  it('PIXELD_CONFIG wins over config/pixeld.yaml', () => {
    write('config/pixeld.yaml', 'server:\n  port: 9400\n');
    const fromEnv = write('from-env.yaml', 'server:\n  port: 9500\n');
    expect(load({ env: { PIXELD_CONFIG: fromEnv } }).config.server.port).toBe(9500);
  });

  it('PORT=abc → ConfigError naming PORT', () => {
    expect(configError({ env: { PORT: 'abc' } }).message).toBe('config: env PORT must be a whole number, got "abc"');
    expect(configError({ env: { PORT: '-1' } }).message).toContain('PORT');
    expect(configError({ env: { PORT: '70000' } }).message).toMatch(/^config: server\.port: /);
  });

  it('an invalid PIXELD_LOG_LEVEL → ConfigError naming log.level', () => {
    expect(configError({ env: { PIXELD_LOG_LEVEL: 'loud' } }).message).toMatch(/^config: log\.level: /);
  });

  it('PIXELD_LOG_FORMAT overrides log.format and keeps the other log keys; an invalid one names log.format', () => {
    const file = write('pixeld.yaml', 'log:\n  format: pretty\n  prompts: true\n');
    expect(load({ configPath: file, env: { PIXELD_LOG_FORMAT: 'json' } }).config.log).toEqual({ level: 'info', format: 'json', requests: true, prompts: true });
    expect(load({ configPath: file, env: {} }).config.log.format).toBe('pretty');
    expect(configError({ env: { PIXELD_LOG_FORMAT: 'xml' } }).message).toMatch(/^config: log\.format: /);
  });
});

describe('loadConfig: errors are one line naming the key', () => {
  it('a bad size names its full path', () => {
    const file = write(
      'bad.yaml',
      'models:\n  - id: m\n    backend: reference\n    capabilities: [generation]\n    sizes: ["1024"]\n',
    );
    expect(configError({ configPath: file }).message).toBe('config: models.0.sizes.0: must look like 1024x1024');
  });

  it('a wrong type names the key', () => {
    const file = write('bad.yaml', 'server:\n  port: "eighty"\n');
    expect(configError({ configPath: file }).message).toMatch(/^config: server\.port: /);
  });

  it('a defaultSize outside sizes names defaultSize', () => {
    const file = write(
      'bad.yaml',
      'models:\n  - {id: m, backend: reference, capabilities: [generation], sizes: [64x64], defaultSize: 128x128}\n',
    );
    expect(configError({ configPath: file }).message).toBe('config: models.0.defaultSize: defaultSize must be one of sizes');
  });

  it('an unknown key is rejected (strict), at the top level and nested', () => {
    expect(configError({ configPath: write('a.yaml', 'bogus: 1\n') }).message).toBe('config: bogus: unknown key');
    expect(configError({ configPath: write('b.yaml', 'server:\n  prot: 8080\n') }).message).toBe('config: server.prot: unknown key');
    expect(configError({ configPath: write('c.yaml', 'limits:\n  maxFoo: 1\n  maxBar: 2\n') }).message).toBe(
      'config: limits.maxFoo: unknown key (also: maxBar)',
    );
    const inModel = write(
      'd.yaml',
      'models:\n  - {id: m, backend: reference, capabilities: [generation], sizes: [64x64], steps: 30}\n',
    );
    expect(configError({ configPath: inModel }).message).toBe('config: models.0.steps: unknown key');
  });

  it('duplicate model ids', () => {
    const file = write(
      'dup.yaml',
      `${MODEL_YAML}  - {id: flux-dev, backend: gpu, capabilities: [generation], sizes: [512x512]}\n`,
    );
    expect(configError({ configPath: file }).message).toBe('config: models.1.id: duplicate model id "flux-dev"');
  });

  it('duplicate backend ids', () => {
    const file = write('dup.yaml', 'backends:\n  - {id: a, type: reference}\n  - {id: a, type: reference}\nmodels:\n  - {id: m, backend: a, capabilities: [edit], sizes: [64x64]}\n');
    expect(configError({ configPath: file }).message).toBe('config: backends.1.id: duplicate backend id "a"');
  });

  it('a model pointing to an unknown backend', () => {
    const file = write('orphan.yaml', 'models:\n  - {id: m, backend: nowhere, capabilities: [generation], sizes: [64x64]}\n');
    expect(configError({ configPath: file }).message).toBe('config: models.0.backend: unknown backend "nowhere"');
  });

  it('an unknown backend type names the type key', () => {
    const file = write('type.yaml', 'backends:\n  - {id: x, type: stable-cascade-2000}\n');
    expect(configError({ configPath: file }).message).toMatch(/^config: backends\.0\.type: /);
  });

  it('a missing file', () => {
    const missing = path.join(dir, 'nope.yaml');
    expect(configError({ configPath: missing }).message).toBe(`config: file not found: ${missing}`);
    expect(configError({ env: { PIXELD_CONFIG: missing } }).message).toBe(`config: file not found: ${missing}`);
  });

  it('invalid YAML', () => {
    const file = write('broken.yaml', 'server: [\n  port: 1\n  host: x\n');
    expect(configError({ configPath: file }).message).toMatch(new RegExp(`^config: ${escape(file)} is not valid YAML: \\S`));
  });

  it('invalid JSON', () => {
    const file = write('broken.json', '{"server": {"port": 1,}}');
    expect(configError({ configPath: file }).message).toMatch(new RegExp(`^config: ${escape(file)} is not valid JSON: \\S`));
  });

  it('a file that is not a mapping', () => {
    const file = write('list.yaml', '- 1\n- 2\n');
    expect(configError({ configPath: file }).message).toBe(`config: ${file} must hold an object at the top level`);
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

describe('the CLI', () => {
  /** Runs `node --import tsx src/cli.ts …` with no PIXELD_* or PORT/HOST from the outer environment. */
  function cli(args: string[], timeoutMs = 20_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const env: NodeJS.ProcessEnv = {};
    for (const [key, value] of Object.entries(process.env)) {
      if (!key.startsWith('PIXELD_') && key !== 'PORT' && key !== 'HOST') env[key] = value;
    }
    env.PORT = '0';
    env.PIXELD_DATA_DIR = path.join(dir, 'data');
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`pixeld ${args.join(' ')} did not exit within ${timeoutMs} ms; stderr: ${stderr}`));
      }, timeoutMs);
      child.on('error', reject);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr });
      });
    });
  }

  it('serve with a bad config file exits non-zero with one clear stderr line', async () => {
    const file = write('bad.yaml', 'models:\n  - id: m\n    backend: reference\n    capabilities: [generation]\n    sizes: ["big"]\n');
    const { code, stdout, stderr } = await cli(['serve', '--config', file]);
    expect(code).not.toBe(0);
    expect(code).not.toBeNull();
    expect(stderr.trimEnd().split('\n')).toEqual(['config: models.0.sizes.0: must look like 1024x1024']);
    expect(stdout).toBe('');
  });

  it('--help lists serve', async () => {
    const { code, stdout } = await cli(['--help']);
    expect(code).toBe(0);
    expect(stdout).toMatch(/^\s+serve\s+/m);
    expect(stdout).toContain('--config');
  });
});

describe('loadConfig: database', () => {
  it('unset: the embedded SQLite store; PIXELD_DATABASE_URL sets database.url over the file, keeping its other keys', () => {
    expect(load().config.database).toEqual({ url: undefined, maxConnections: 10, connectTimeoutMs: 5_000 });
    const file = write('pixeld.yaml', 'database:\n  url: postgres://a@db1/pixeld\n  maxConnections: 4\n');
    expect(load({ configPath: file }).config.database).toMatchObject({ url: 'postgres://a@db1/pixeld', maxConnections: 4 });
    const { config } = load({ configPath: file, env: { PIXELD_DATABASE_URL: 'postgresql://b:secret@db2:5433/p' } });
    expect(config.database).toMatchObject({ url: 'postgresql://b:secret@db2:5433/p', maxConnections: 4 });
  });

  it('refuses a URL that is not postgres://, and a store.type that contradicts database.url', () => {
    expect(configError({ env: { PIXELD_DATABASE_URL: 'mysql://db/pixeld' } }).message).toBe(
      'config: database.url: must be a postgres:// URL, e.g. postgres://pixeld@db.internal:5432/pixeld',
    );
    const sqlite = write('a.yaml', 'store:\n  type: sqlite\n');
    expect(configError({ configPath: sqlite, env: { PIXELD_DATABASE_URL: 'postgres://db/p' } }).message).toMatch(
      /^config: store\.type: is "sqlite" but database\.url/,
    );
    const postgres = write('b.yaml', 'store:\n  type: postgres\n');
    expect(configError({ configPath: postgres }).message).toMatch(/^config: database\.url: required when store\.type is "postgres"/);
  });
});
