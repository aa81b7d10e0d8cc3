/**
 * A temp-dir imitation of Linux configfs-tsm (drivers/virt/coco/tsm.c) for quote-generation tests. Report
 * entries are real directories under `<dir>/report`, with real `provider` and `generation` files; the
 * kernel's behaviour (generation bumps on each inblob write, outblob quoting the last inblob, attributes
 * vanishing on rmdir) is simulated by the `TsmFs` it hands out. Hooks inject the failures a real machine
 * shows: EBUSY on inblob, a racing writer, the wrong provider, a truncated outblob.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TsmFs } from '../../src/tee/configfs-tsm.js';
import { buildFakeTdxQuote } from './dstack-guest-agent.js';

export interface FakeTsmStats {
  entriesCreated: number;
  inblobWrites: number;
  /** inblob writes refused by an injected error. */
  inblobRejections: number;
  outblobReads: number;
  /** Most report entries that existed at once: 1 when quote generation is serialised. */
  maxLiveEntries: number;
}

export interface FakeTsm {
  /** The temp root; removed by close(). */
  dir: string;
  /** `<dir>/report`: pass as tsmReportDir. */
  reportDir: string;
  fs: TsmFs;
  stats: FakeTsmStats;
  /** The next `count` inblob writes fail with `code` (EBUSY like a busy kernel) and change nothing. */
  failInblobWrites(count: number, code?: string): void;
  /**
   * For the next `count` outblob reads, another process writes its own inblob first: generation moves one
   * further and the quote carries the other writer's report data.
   */
  raceNext(count?: number): void;
  /** `provider` text of entries made from now on. @default 'tdx_guest\n' */
  setProvider(provider: string): void;
  /** Size of quotes from now on; undefined restores the ~5 KB default. */
  setOutblobSize(bytes: number | undefined): void;
  /** outblob reads take this long, as quoting takes real time (seconds on hardware). */
  setOutblobDelayMs(ms: number): void;
  /** Names of the report entries that exist right now. */
  liveEntries(): Promise<string[]>;
  close(): Promise<void>;
}

interface EntryState {
  generation: number;
  inblob: Buffer | undefined;
}

const ATTRIBUTES_ON_DISK = ['provider', 'generation'];

export async function createFakeTsm(): Promise<FakeTsm> {
  const dir = await mkdtemp(path.join(tmpdir(), 'pixeld-tsm-'));
  const reportDir = path.join(dir, 'report');
  await mkdir(reportDir);

  const entries = new Map<string, EntryState>();
  const stats: FakeTsmStats = { entriesCreated: 0, inblobWrites: 0, inblobRejections: 0, outblobReads: 0, maxLiveEntries: 0 };
  let provider = 'tdx_guest\n';
  let pendingInblobErrors: string[] = [];
  let pendingRaces = 0;
  let outblobSize: number | undefined;
  let outblobDelayMs = 0;

  const entryOf = (file: string): { entry: string; state: EntryState; attribute: string } | undefined => {
    const entry = path.dirname(file);
    const state = entries.get(entry);
    return state ? { entry, state, attribute: path.basename(file) } : undefined;
  };

  const bumpGeneration = async (entry: string, state: EntryState, inblob: Buffer) => {
    state.inblob = Buffer.from(inblob);
    state.generation += 1;
    await writeFile(path.join(entry, 'generation'), `${state.generation}\n`);
  };

  const fs: TsmFs = {
    async mkdir(p) {
      await mkdir(p);
      if (path.dirname(p) !== reportDir) return;
      await writeFile(path.join(p, 'provider'), provider);
      await writeFile(path.join(p, 'generation'), '0\n');
      entries.set(p, { generation: 0, inblob: undefined });
      stats.entriesCreated += 1;
      stats.maxLiveEntries = Math.max(stats.maxLiveEntries, entries.size);
    },
    async rmdir(p) {
      // configfs removes an item's attributes with it; a plain directory would refuse (ENOTEMPTY).
      if (entries.delete(p)) {
        await Promise.all(ATTRIBUTES_ON_DISK.map((name) => rm(path.join(p, name), { force: true })));
      }
      await rmdir(p);
    },
    async readFile(p) {
      const target = entryOf(p);
      if (target?.attribute === 'inblob') throw errnoError('EACCES', 'open', p);
      if (target?.attribute !== 'outblob') return readFile(p);
      const { entry, state } = target;
      stats.outblobReads += 1;
      if (outblobDelayMs > 0) await new Promise((r) => setTimeout(r, outblobDelayMs));
      if (pendingRaces > 0) {
        pendingRaces -= 1;
        await bumpGeneration(entry, state, randomBytes(64));
      }
      // tdx_report_new refuses report data of any other length.
      if (state.inblob === undefined || state.inblob.length !== 64) throw errnoError('EINVAL', 'read', p);
      return buildFakeTdxQuote(state.inblob, { totalBytes: outblobSize, seed: entry });
    },
    async writeFile(p, data) {
      const target = entryOf(p);
      if (target === undefined) return writeFile(p, data);
      if (target.attribute !== 'inblob') throw errnoError('EACCES', 'open', p);
      stats.inblobWrites += 1;
      const injected = pendingInblobErrors.shift();
      if (injected !== undefined) {
        stats.inblobRejections += 1;
        throw errnoError(injected, 'write', p);
      }
      // The kernel's inblob holds at most 64 bytes; for TDX anything but exactly 64 fails.
      if (data.length !== 64) throw errnoError('EINVAL', 'write', p);
      await bumpGeneration(target.entry, target.state, data);
    },
  };

  return {
    dir,
    reportDir,
    fs,
    stats,
    failInblobWrites(count, code = 'EBUSY') {
      pendingInblobErrors = [...pendingInblobErrors, ...Array<string>(count).fill(code)];
    },
    raceNext(count = 1) {
      pendingRaces += count;
    },
    setProvider(text) {
      provider = text;
    },
    setOutblobSize(bytes) {
      outblobSize = bytes;
    },
    setOutblobDelayMs(ms) {
      outblobDelayMs = ms;
    },
    liveEntries: () => readdir(reportDir),
    async close() {
      await rm(dir, { recursive: true, force: true });
    },
  };
}

function errnoError(code: string, syscall: string, file: string): NodeJS.ErrnoException {
  const messages: Record<string, string> = {
    EBUSY: 'resource busy or locked',
    EINVAL: 'invalid argument',
    EACCES: 'permission denied',
  };
  const err: NodeJS.ErrnoException = new Error(`${code}: ${messages[code] ?? 'error'}, ${syscall} '${file}'`);
  err.code = code;
  err.syscall = syscall;
  err.path = file;
  return err;
}
