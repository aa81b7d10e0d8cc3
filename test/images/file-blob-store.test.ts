import { FileBlobStore } from '../../src/images/file-blob-store.js';
import { describeBlobStoreConformance } from './blob-store-conformance.js';

/** The file store of a daemon on SQLite. */

describeBlobStoreConformance('files', async ({ dataDir, minFreeBytes }) => {
  const blobs = new FileBlobStore(dataDir, minFreeBytes);
  await blobs.init();
  return blobs;
});
