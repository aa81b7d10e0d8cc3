import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import path from 'node:path';
import { Wallet } from 'ethers';
import { generateTdxQuote, probeTsmProvider, type TsmFs } from './configfs-tsm.js';
import { TeeError, type TeeKeyProvider } from './key-provider.js';

export interface TdxKeyOptions {
  /** configfs-tsm report directory, e.g. /sys/kernel/config/tsm/report. */
  tsmReportDir: string;
  /** Where the key lives; must be on tmpfs inside the TD so a VM reboot destroys it. */
  keyFile: string;
}

export interface TdxKeyDeps {
  /** configfs access; the key file always uses the real filesystem. @default nodeTsmFs */
  fs?: TsmFs;
}

/**
 * `tdx` mode: a key made inside the TD at first start and kept on tmpfs, so a daemon restart keeps the
 * registered signer and a VM reboot rotates it. Quotes come from configfs-tsm.
 */
export async function openTdxKeyProvider(options: TdxKeyOptions, deps: TdxKeyDeps = {}): Promise<TeeKeyProvider> {
  await requireDirectory(options.tsmReportDir);
  // Fail at start-up on a non-TDX machine rather than at the first attestation request.
  await probeTsmProvider({ tsmReportDir: options.tsmReportDir, fs: deps.fs });
  const wallet = await loadOrCreateKey(options.keyFile);
  return {
    mode: 'tdx',
    teeLabel: 'tdx',
    insecure: false,
    keySource: 'tdx-tmpfs',
    address: wallet.address,
    signer: wallet,
    // Beside the key, on the TD's tmpfs: the host operator can edit the data dir, not the TD's memory.
    journalDir: path.dirname(options.keyFile),
    signatureChain: [],
    async info() {
      return undefined;
    },
    async quote(reportData: Buffer) {
      const quote = await generateTdxQuote(reportData, { tsmReportDir: options.tsmReportDir, fs: deps.fs });
      return { quote, quoteProvider: 'configfs-tsm', eventLog: undefined };
    },
  };
}

async function requireDirectory(dir: string): Promise<void> {
  let isDir = false;
  try {
    isDir = (await fsp.stat(dir)).isDirectory();
  } catch {
    // Reported below with the reason that matters to an operator.
  }
  if (!isDir) {
    throw new TeeError(
      `configfs-tsm report directory ${dir} does not exist: this is not a TDX guest, or configfs is not mounted ` +
        '(mount -t configfs none /sys/kernel/config), or the kernel lacks CONFIG_TSM_REPORTS',
    );
  }
}

async function loadOrCreateKey(keyFile: string): Promise<Wallet> {
  const existing = await readKeyFile(keyFile);
  if (existing) return existing;

  const dir = path.dirname(keyFile);
  try {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new TeeError(`cannot create the key directory ${dir}: ${errorText(err)}`, { cause: err });
  }
  const fresh = Wallet.createRandom();
  const temp = path.join(dir, `.${path.basename(keyFile)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const handle = await fsp.open(temp, 'wx', 0o600);
    try {
      await handle.writeFile(`${fresh.privateKey}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    // link, not rename: rename would replace a key another process published a moment ago, leaving it
    // signing with a key that is no longer on disk. link fails with EEXIST instead, and we adopt theirs.
    try {
      await fsp.link(temp, keyFile);
    } catch (err) {
      if (errorCode(err) !== 'EEXIST') throw err;
      const theirs = await readKeyFile(keyFile);
      if (theirs) return theirs;
      throw new TeeError(`${keyFile} appeared and vanished while it was being created`);
    }
  } catch (err) {
    if (err instanceof TeeError) throw err;
    throw new TeeError(`cannot write the TEE key file ${keyFile}: ${errorText(err)}`, { cause: err });
  } finally {
    await fsp.rm(temp, { force: true }).catch(() => undefined);
  }
  return new Wallet(fresh.privateKey);
}

/** The key in `keyFile`, or undefined when there is none yet. */
async function readKeyFile(keyFile: string): Promise<Wallet | undefined> {
  let stat;
  try {
    stat = await fsp.lstat(keyFile);
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return undefined;
    throw new TeeError(`cannot inspect the TEE key file ${keyFile}: ${errorText(err)}`, { cause: err });
  }
  if (!stat.isFile()) throw new TeeError(`${keyFile} is not a regular file; refusing to use it as the TEE signing key`);
  if ((stat.mode & 0o077) !== 0) {
    throw new TeeError(
      `${keyFile} has mode 0${(stat.mode & 0o777).toString(8)}: group/other permission bits are set, so the key may ` +
        'have been read by others. Refusing to use it; delete the file to make a new key (and re-register the signer).',
    );
  }
  let text: string;
  try {
    text = (await fsp.readFile(keyFile, 'utf8')).trim();
  } catch (err) {
    throw new TeeError(`cannot read the TEE key file ${keyFile}: ${errorText(err)}`, { cause: err });
  }
  if (!/^0x[0-9a-fA-F]{64}$/.test(text)) throw new TeeError(`${keyFile} does not hold a 32-byte hex key`);
  try {
    return new Wallet(text);
  } catch {
    // No cause attached: it could quote the key material.
    throw new TeeError(`${keyFile} does not hold a valid secp256k1 private key`);
  }
}

function errorCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
