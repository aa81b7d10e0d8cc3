/**
 * Preloaded into the daemon (`node --import tsx --import …/enospc-preload.ts`) only where the test may not
 * mount a small filesystem: makes the daemon's own file writes under the data dir fail with ENOSPC and its
 * free-space reads report a nearly full or full disk, as the flag file says (`ok`, `low <bytes>`, `full`).
 * The ESM bindings the daemon imports (`import { writeFile } from 'node:fs/promises'`) follow the patch
 * through syncBuiltinESMExports. SQLite writes through its own C code and is not affected.
 */
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

const flag = process.env.PIXELD_TEST_DISK_FLAG;
const root = process.env.PIXELD_TEST_DISK_ROOT;
const diskBytes = Number(process.env.PIXELD_TEST_DISK_BYTES ?? 64 * 1024 * 1024);

if (flag && root) {
  const state = (): string => {
    try {
      return fs.readFileSync(flag, 'utf8').trim();
    } catch {
      return 'ok';
    }
  };
  const enospc = (file: unknown): NodeJS.ErrnoException =>
    Object.assign(new Error(`ENOSPC: no space left on device, write '${String(file)}'`), { code: 'ENOSPC', errno: -28, syscall: 'write' });

  const writeFile = fs.promises.writeFile;
  fs.promises.writeFile = (async (file: Parameters<typeof writeFile>[0], ...rest: unknown[]) => {
    if (state() === 'full' && String(file).startsWith(root)) throw enospc(file);
    return (writeFile as (...args: unknown[]) => Promise<void>)(file, ...rest);
  }) as typeof writeFile;

  const statfs = fs.promises.statfs;
  fs.promises.statfs = (async (p: fs.PathLike, options?: fs.StatFsOptions) => {
    const real = await statfs(p, options as fs.StatFsOptions & { bigint?: false });
    const s = state();
    if (!String(p).startsWith(root) || s === 'ok') return real;
    const bsize = 4096;
    const free = s === 'full' ? 0 : Number(s.split(' ')[1] ?? 0);
    return { ...real, bsize, blocks: Math.floor(diskBytes / bsize), bfree: Math.floor(free / bsize), bavail: Math.floor(free / bsize) };
  }) as typeof statfs;

  syncBuiltinESMExports();
}
