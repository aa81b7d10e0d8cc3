import type { Config } from '../config/schema.js';
import { openDevKeyProvider } from './dev-key.js';
import { openDstackKeyProvider } from './dstack-key.js';
import type { TeeKeyProvider } from './key-provider.js';
import { openTdxKeyProvider } from './tdx-key.js';

export interface OpenKeyProviderOptions {
  tee: Config['tee'];
  dataDir: string;
  nodeEnv: string | undefined;
}

/** The key provider `tee.mode` names; a new TEE adds a case here and a file beside it. */
export async function openTeeKeyProvider(options: OpenKeyProviderOptions): Promise<TeeKeyProvider> {
  const { tee } = options;
  switch (tee.mode) {
    case 'dev':
      return openDevKeyProvider({ dataDir: options.dataDir, nodeEnv: options.nodeEnv, allowInProduction: tee.allowDevInProduction });
    case 'dstack':
      return openDstackKeyProvider({ endpoint: tee.dstack.endpoint, keyPath: tee.dstack.keyPath, journalDir: options.dataDir });
    case 'tdx':
      return openTdxKeyProvider({ tsmReportDir: tee.tdx.tsmReportDir, keyFile: tee.tdx.keyFile });
  }
}
