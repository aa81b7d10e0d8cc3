import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify as toYaml } from 'yaml';
import { sleep } from './mode.js';

/**
 * `pixeld serve` as a real child process — the program an operator runs, through tsx instead of a build —
 * on a given data dir and an ephemeral port. It can be SIGKILLed at any moment and started again on the
 * same dir; its RSS is read from /proc; everything it writes (its log) is kept for the secrets grep.
 */

const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const CLI = path.join(REPO, 'src', 'cli.ts');

export interface ChildOptions {
  name: string;
  /** The config file's content (written next to the data dir); dataDir and the port come from env. */
  config: Record<string, unknown>;
  dataDir: string;
  /** Extra environment (provider key, admin token env, NODE_ENV, …). */
  env?: Record<string, string>;
  /** Node flags after tsx's, before the CLI: e.g. `--import` of a test preload (TypeScript works there). */
  nodeArgs?: string[];
  logLevel?: 'error' | 'warn' | 'info' | 'debug';
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Every child started in this worker, for cleanup and for the log grep. */
export const children: ChildDaemon[] = [];

export class ChildDaemon {
  url = '';
  output = '';
  readonly startedAtMs = Date.now();
  readonly exited: Promise<ExitInfo>;
  private exitInfo: ExitInfo | undefined;

  constructor(
    readonly name: string,
    private readonly proc: ChildProcess,
  ) {
    proc.stdout!.setEncoding('utf8').on('data', (s: string) => (this.output += s));
    proc.stderr!.setEncoding('utf8').on('data', (s: string) => (this.output += s));
    this.exited = once(proc, 'exit').then(([code, signal]) => {
      this.exitInfo = { code: code as number | null, signal: signal as NodeJS.Signals | null };
      return this.exitInfo;
    });
  }

  get pid(): number {
    return this.proc.pid!;
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  tail(lines = 40): string {
    return `--- ${this.name} (pid ${this.proc.pid}) output ---\n${this.output.split('\n').slice(-lines).join('\n')}`;
  }

  /** Resolves once the child logged its URL and /healthz answers. */
  async ready(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!this.running) throw new Error(`${this.name} exited during start-up (${JSON.stringify(this.exitInfo)})\n${this.tail()}`);
      const match = /pixeld listening on (http:\/\/[^\s"]+)/.exec(this.output);
      if (match) {
        this.url = match[1]!;
        try {
          if ((await fetch(`${this.url}/healthz`)).ok) return;
        } catch {
          // not accepting connections yet
        }
      }
      await sleep(25);
    }
    throw new Error(`${this.name} was not healthy within ${timeoutMs} ms\n${this.tail()}`);
  }

  async kill(signal: NodeJS.Signals): Promise<ExitInfo> {
    if (this.running) this.proc.kill(signal);
    return this.exited;
  }

  /** Resident set size of the daemon process now, from /proc (Linux). */
  rssBytes(): number {
    const status = readFileSync(`/proc/${this.proc.pid}/status`, 'utf8');
    const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1];
    if (kb === undefined) throw new Error(`no VmRSS for pid ${this.proc.pid}`);
    return Number(kb) * 1024;
  }

  /** Parsed JSON log lines so far (the daemon logs JSON when stdout is not a terminal). */
  logLines(): Array<Record<string, unknown>> {
    const lines: Array<Record<string, unknown>> = [];
    for (const line of this.output.split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // a line cut by a SIGKILL
      }
    }
    return lines;
  }
}

/** Starts the daemon and waits until it is healthy. */
export async function startChild(options: ChildOptions): Promise<ChildDaemon> {
  const configFile = `${options.dataDir.replace(/\/+$/, '')}.${children.length}.yaml`;
  writeFileSync(configFile, toYaml(options.config));
  const proc = spawn(process.execPath, ['--import', 'tsx', ...(options.nodeArgs ?? []), CLI, 'serve', '--config', configFile], {
    cwd: REPO,
    env: {
      ...process.env,
      PORT: '0',
      HOST: '127.0.0.1',
      PIXELD_DATA_DIR: options.dataDir,
      PIXELD_CONFIG: '',
      PIXELD_LOG_LEVEL: options.logLevel ?? 'info',
      PIXELD_PUBLIC_BASE_URL: '',
      ...(options.env ?? {}),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const child = new ChildDaemon(options.name, proc);
  children.push(child);
  await child.ready();
  return child;
}

/** Starts the daemon and waits for it to exit on its own (a start-up refusal); returns its exit and output. */
export async function runChildToExit(options: ChildOptions, timeoutMs = 30_000): Promise<{ exit: ExitInfo; output: string }> {
  const configFile = `${options.dataDir.replace(/\/+$/, '')}.exit.yaml`;
  writeFileSync(configFile, toYaml(options.config));
  const proc = spawn(process.execPath, ['--import', 'tsx', CLI, 'serve', '--config', configFile], {
    cwd: REPO,
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', PIXELD_DATA_DIR: options.dataDir, PIXELD_CONFIG: '', ...(options.env ?? {}) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const child = new ChildDaemon(options.name, proc);
  children.push(child);
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  const exit = await child.exited;
  clearTimeout(timer);
  return { exit, output: child.output };
}

/** SIGKILLs every child still running (afterAll / afterEach). */
export async function killAllChildren(): Promise<void> {
  for (const child of children) await child.kill('SIGKILL');
}

/** The RSS of a child sampled every `everyMs` until stopped: peak and the samples' spread over the run. */
export function sampleRss(child: () => ChildDaemon | undefined, everyMs = 200): { stop(): { peakBytes: number; samples: number[] } } {
  const samples: number[] = [];
  const timer = setInterval(() => {
    const c = child();
    if (!c?.running) return;
    try {
      samples.push(c.rssBytes());
    } catch {
      // the process just exited
    }
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      return { peakBytes: samples.length > 0 ? Math.max(...samples) : 0, samples };
    },
  };
}
