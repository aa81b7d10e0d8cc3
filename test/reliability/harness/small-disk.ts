import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * A small filesystem for the daemon's data dir that the test can really fill up: a tmpfs mounted by the
 * test (root), else a loop-mounted ext4 image, else — last resort, where neither mount is permitted — no
 * real filesystem at all but ENOSPC injected into the daemon's own file writes and free-space reads by a
 * preload module (harness/enospc-preload.ts); SQLite cannot be reached that way. `method` says which one
 * ran; `RELIABILITY_DISK_METHOD=tmpfs|loop-ext4|injected` forces one.
 */

export type DiskMethod = 'tmpfs' | 'loop-ext4' | 'injected';

export interface SmallDisk {
  method: DiskMethod;
  sizeBytes: number;
  /** The data dir to give the daemon (on the small filesystem). */
  dataDir: string;
  /** Node flags and env the daemon needs (the preload, in `injected` mode). */
  nodeArgs: string[];
  env: Record<string, string>;
  /** Fills the filesystem until at most `leaveBytes` are free; returns what is free then. */
  fill(leaveBytes: number): number;
  /** Free bytes now. */
  freeBytes(): number;
  /** Deletes the filler: the space returns. */
  release(): void;
  /** Unmounts and removes everything. */
  close(): void;
}

const PRELOAD = fileURLToPath(new URL('./enospc-preload.ts', import.meta.url));

export function makeSmallDisk(sizeMiB: number): SmallDisk {
  const root = mkdtempSync(path.join(tmpdir(), 'pixeld-smalldisk-'));
  const mountPoint = path.join(root, 'mnt');
  mkdirSync(mountPoint);
  const forced = process.env.RELIABILITY_DISK_METHOD as DiskMethod | undefined;
  const sizeBytes = sizeMiB * 1024 * 1024;
  const tryMount = (method: DiskMethod): boolean => {
    if (forced !== undefined && forced !== method) return false;
    try {
      if (method === 'tmpfs') execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=0755`, 'tmpfs', mountPoint], { stdio: 'pipe' });
      else {
        const image = path.join(root, 'disk.img');
        execFileSync('truncate', ['-s', `${sizeMiB}M`, image], { stdio: 'pipe' });
        execFileSync('mkfs.ext4', ['-q', '-F', '-m', '0', image], { stdio: 'pipe' });
        execFileSync('mount', ['-o', 'loop', image, mountPoint], { stdio: 'pipe' });
      }
      return true;
    } catch {
      return false;
    }
  };
  const method: DiskMethod = tryMount('tmpfs') ? 'tmpfs' : tryMount('loop-ext4') ? 'loop-ext4' : 'injected';
  const dataDir = path.join(mountPoint, 'data');
  mkdirSync(dataDir);
  const filler = path.join(mountPoint, 'filler');

  if (method === 'injected') {
    const flag = path.join(root, 'disk-state');
    writeFileSync(flag, 'ok');
    return {
      method,
      sizeBytes,
      dataDir,
      nodeArgs: ['--import', PRELOAD],
      env: { PIXELD_TEST_DISK_FLAG: flag, PIXELD_TEST_DISK_ROOT: dataDir, PIXELD_TEST_DISK_BYTES: String(sizeBytes) },
      fill(leaveBytes) {
        writeFileSync(flag, leaveBytes > 0 ? `low ${leaveBytes}` : 'full');
        return leaveBytes;
      },
      freeBytes: () => sizeBytes,
      release: () => writeFileSync(flag, 'ok'),
      close: () => rmSync(root, { recursive: true, force: true }),
    };
  }

  const freeBytes = () => {
    const s = statfsSync(mountPoint);
    return s.bavail * s.bsize;
  };
  return {
    method,
    sizeBytes,
    dataDir,
    nodeArgs: [],
    env: {},
    fill(leaveBytes) {
      const fd = openSync(filler, 'a');
      const chunk = Buffer.alloc(64 * 1024, 0xa5);
      try {
        while (freeBytes() > leaveBytes) {
          const room = freeBytes() - leaveBytes;
          writeSync(fd, room >= chunk.length ? chunk : chunk.subarray(0, Math.max(1, room)));
        }
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
      } finally {
        closeSync(fd);
      }
      return freeBytes();
    },
    freeBytes,
    release: () => rmSync(filler, { force: true }),
    close() {
      try {
        execFileSync('umount', ['-l', mountPoint], { stdio: 'pipe' });
      } catch {
        // already gone
      }
      rmSync(root, { recursive: true, force: true });
    },
  };
}
