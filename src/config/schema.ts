import { z } from 'zod';
import { isAllowListEntry } from '../webhooks/allow-list.js';

/**
 * The whole configuration, validated once at start-up and frozen. Every limit names its unit and has
 * its default here, in one visible place. config/pixeld.example.yaml documents each key.
 */

const MiB = 1024 * 1024;

const addressString = z.string().regex(/^0x[0-9a-fA-F]{40}$/, 'must be a 0x-prefixed 20-byte hex address');
const authMethod = z.enum(['0g', 'api-key']);
/** Owner ids of API keys cannot look like addresses, so they never collide with 0G users. */
const ownerId = z.string().regex(/^[A-Za-z][\w.-]{0,63}$/, 'letters, digits, _ . -, starting with a letter');
/** A webhook URL as the config may name one: https, no credentials (the address is checked at delivery). */
const webhookUrl = z
  .string()
  .refine((text) => URL.canParse(text) && new URL(text).protocol === 'https:', 'must be an https URL')
  .refine((text) => !URL.canParse(text) || (new URL(text).username === '' && new URL(text).password === ''), 'must not carry credentials');
const webhookAllowEntry = z
  .string()
  .refine(isAllowListEntry, 'must be a CIDR (10.0.0.0/8, fd00::/8), an IP address, or a host name');
const apiKeySchema = z.union([
  z.object({ owner: ownerId, sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex characters') }).strict(),
  z.object({ owner: ownerId, env: z.string().min(1) }).strict(),
]);

const sizeString = z.string().regex(/^\d{2,5}x\d{2,5}$/, 'must look like 1024x1024');
const weiString = z
  .union([z.string().regex(/^\d+$/, 'must be a whole number of wei'), z.number().int().nonnegative()])
  .transform((v) => BigInt(v));

/** The OpenAI-compatible servers whose habits pixeld knows; `generic` assumes OpenAI's API with the open-model extensions. */
export const OPENAI_FLAVORS = ['generic', 'openai', 'sglang', 'vllm-omni', 'localai'] as const;

const backendCommon = {
  id: z.string().regex(/^[a-z0-9][a-z0-9_-]*$/, 'lowercase letters, digits, - and _'),
  /**
   * Backend calls running at once. 0: this replica accepts jobs for the backend but runs none — another
   * replica sharing the database (PostgreSQL) runs them, and this one need not reach the backend at all.
   */
  concurrency: z.number().int().min(0).max(256).default(1),
  /** Jobs waiting for this backend beyond which submits get 429. */
  maxQueuedJobs: z.number().int().min(1).default(200),
  /** Images one upstream call may return; the runner splits larger n. */
  maxImagesPerCall: z.number().int().min(1).max(16).default(4),
  /**
   * After a crash, jobs that were running on this backend are run again (true) or failed with a clear
   * message (false). Stateless HTTP backends re-run safely: nothing was delivered or billed.
   */
  rerunInterruptedJobs: z.boolean().default(true),
};

export const referenceBackendSchema = z
  .object({
    ...backendCommon,
    type: z.literal('reference'),
    /** Simulated model time per image, to imitate a slow GPU: a call of n images lasts n × this, rendering included. */
    latencyMsPerImage: z.number().int().min(0).max(600_000).default(0),
  })
  .strict();

export const openaiBackendSchema = z
  .object({
    ...backendCommon,
    type: z.literal('openai'),
    /**
     * Which server this is; sets the defaults of the keys below to what that server does
     * (backends/openai-flavors.ts, README "OpenAI-compatible servers"). Keys set here override them.
     */
    flavor: z.enum(OPENAI_FLAVORS).default('generic'),
    /** Base URL up to and including /v1, e.g. http://127.0.0.1:30000/v1 */
    baseUrl: z.url(),
    /** Sent as a bearer token when set; taken from the env var named by apiKeyEnv when that is set. */
    apiKey: z.string().optional(),
    apiKeyEnv: z.string().optional(),
    /** Route of edits under baseUrl: `/images/edits`, or LocalAI's `/images/inpainting`. */
    editPath: z.enum(['/images/edits', '/images/inpainting']).optional(),
    /** Field the edit endpoint expects for the input images: `image[]` (OpenAI) or `image`. */
    editImageField: z.enum(['image[]', 'image']).optional(),
    /** Field for the mask: `mask`, or vLLM-Omni's `mask_image`. */
    editMaskField: z.enum(['mask', 'mask_image']).optional(),
    /** How the server reads a mask: OpenAI's alpha, white = inpaint, or not at all (SGLang: warned, not sent). */
    maskConvention: z.enum(['openai-alpha', 'white-inpaint', 'ignored']).optional(),
    /**
     * Whether the images of one call get seeds of their own. When not (vLLM-Omni, LocalAI: one seed per
     * call, so n images of a call are the same picture), each call asks for one image with its own seed.
     */
    seedPerImage: z.boolean().optional(),
    /** How a negative prompt travels: the `negative_prompt` field, or LocalAI's `prompt: "positive|negative"`. */
    negativePrompt: z.enum(['field', 'prompt-pipe']).optional(),
    /**
     * Send the extension fields (seed, negative_prompt, num_inference_steps, guidance_scale). Open-model
     * servers take them; OpenAI's own API refuses unknown fields.
     */
    sendExtensions: z.boolean().optional(),
    /** Ask the backend for b64_json; false for servers that refuse the field or only return url. */
    requestB64: z.boolean().optional(),
    /** Largest image the adapter downloads from a backend-returned URL. */
    maxDownloadBytes: z.number().int().min(1).default(64 * MiB),
    connectTimeoutMs: z.number().int().min(1).default(10_000),
    /** Path probed by /readyz. */
    healthPath: z.string().default('/models'),
  })
  .strict();

export const comfyuiBackendSchema = z
  .object({
    ...backendCommon,
    type: z.literal('comfyui'),
    /** ComfyUI server, e.g. http://127.0.0.1:8188 */
    baseUrl: z.url(),
    /**
     * API-format workflow JSON per model (the model's backendModel, or id): its marked inputs receive the
     * prompt, seed, size, batch size, images and mask (see config/comfyui/README.md).
     */
    workflows: z.record(z.string(), z.string()),
    /** Subfolder of ComfyUI's input dir that uploads go to. */
    uploadSubfolder: z.string().default('pixeld'),
    /** While the websocket is down, job state is polled this often. */
    pollIntervalMs: z.number().int().min(50).default(1_000),
    /**
     * While the websocket is up, job state is still read this often: a socket can go silent without
     * closing (a half-open TCP connection), and a missed completion event must not stall a job.
     */
    reconcileIntervalMs: z.number().int().min(100).default(15_000),
    /**
     * After a daemon crash, a job that was running here is submitted again. ComfyUI keeps running the
     * orphaned prompt (it does not know the daemon died), so a re-run costs at most that prompt's GPU time
     * once more; nothing was delivered or billed. Set false to fail such jobs instead.
     */
    rerunInterruptedJobs: z.boolean().default(true),
    connectTimeoutMs: z.number().int().min(1).default(10_000),
    maxDownloadBytes: z.number().int().min(1).default(64 * MiB),
    /** Path probed by /readyz. */
    healthPath: z.string().default('/system_stats'),
  })
  .strict();

export const a1111BackendSchema = z
  .object({
    ...backendCommon,
    type: z.literal('a1111'),
    /** AUTOMATIC1111 / Forge web UI started with --api, e.g. http://127.0.0.1:7860 */
    baseUrl: z.url(),
    /** For servers started with --api-auth user:password: the env vars holding them. */
    usernameEnv: z.string().optional(),
    passwordEnv: z.string().optional(),
    steps: z.number().int().min(1).max(500).default(30),
    cfgScale: z.number().min(0).max(50).default(7),
    samplerName: z.string().default('Euler a'),
    /** img2img: how far the output may move from the input. */
    denoisingStrength: z.number().min(0).max(1).default(0.75),
    maskBlur: z.number().int().min(0).max(64).default(4),
    /** img2img inpainting_fill: 0 fill, 1 original, 2 latent noise, 3 latent nothing. */
    inpaintingFill: z.number().int().min(0).max(3).default(1),
    /**
     * img2img resize_mode, applied alike to the input image and the mask when the output size differs:
     * 0 just resize (stretch), 1 crop and resize, 2 resize and fill, 3 just resize (latent upscale).
     */
    resizeMode: z.number().int().min(0).max(3).default(0),
    /**
     * Send the model's backendModel as override_settings.sd_model_checkpoint, so one server serves several
     * checkpoints (each switch loads weights: slow). Off: whatever checkpoint is loaded serves every model.
     */
    sendCheckpoint: z.boolean().default(false),
    /** How often /internal/progress is read while a job runs. */
    progressPollMs: z.number().int().min(50).default(1_000),
    /** Largest txt2img/img2img answer read (base64 images, plus any extension outputs). */
    maxResponseBytes: z.number().int().min(1024).default(512 * MiB),
    connectTimeoutMs: z.number().int().min(1).default(10_000),
    healthPath: z.string().default('/sdapi/v1/options'),
  })
  .strict();

export const siliconflowBackendSchema = z
  .object({
    ...backendCommon,
    type: z.literal('siliconflow'),
    /**
     * One image per call by default: the API takes one base seed per request and reports only that seed,
     * so images of a batch cannot carry the seed + i each image is owed; the runner gives each call its own
     * seed instead. batch_size (up to 4) is honoured by Kolors only; raise this only for such models.
     */
    maxImagesPerCall: z.number().int().min(1).max(4).default(1),
    /** Hosted API base including /v1, e.g. https://api.siliconflow.cn/v1 */
    baseUrl: z.url(),
    apiKey: z.string().optional(),
    apiKeyEnv: z.string().optional(),
    /** Sent when the caller gives none. */
    numInferenceSteps: z.number().int().min(1).max(100).optional(),
    guidanceScale: z.number().min(0).max(20).optional(),
    /** Largest result image downloaded from the returned URLs (they expire after an hour). */
    maxDownloadBytes: z.number().int().min(1).default(64 * MiB),
    connectTimeoutMs: z.number().int().min(1).default(10_000),
    healthPath: z.string().default('/models'),
  })
  .strict();

export const backendSchema = z.discriminatedUnion('type', [
  referenceBackendSchema,
  openaiBackendSchema,
  comfyuiBackendSchema,
  a1111BackendSchema,
  siliconflowBackendSchema,
]);

export const modelSchema = z
  .object({
    /** The id clients send as `model` and see in /v1/models. */
    id: z.string().min(1).max(200),
    backend: z.string(),
    /** The name the backend knows the model by; defaults to id. */
    backendModel: z.string().optional(),
    capabilities: z.array(z.enum(['generation', 'edit'])).min(1),
    sizes: z.array(sizeString).min(1),
    defaultSize: sizeString.optional(),
    maxN: z.number().int().min(1).max(10).default(4),
    /** Jobs of this model pending or running at once, from all callers; beyond it submits get 429. */
    maxInFlight: z.number().int().min(1).default(500),
    /** Quality reported when the caller sends none or `auto`. */
    defaultQuality: z.enum(['low', 'medium', 'high']).default('high'),
    /** Price of one delivered image, in wei. */
    pricePerImageWei: weiString.default(0n),
    /** Non-OpenAI request fields this model accepts and passes to its backend; others get 400. */
    extensions: z
      .array(z.enum(['seed', 'negative_prompt', 'num_inference_steps', 'guidance_scale']))
      .default(['seed', 'negative_prompt']),
    description: z.string().optional(),
  })
  .strict()
  .refine((m) => m.defaultSize === undefined || m.sizes.includes(m.defaultSize), {
    message: 'defaultSize must be one of sizes',
    path: ['defaultSize'],
  });

export const configSchema = z
  .object({
    server: z
      .object({
        host: z.string().default('127.0.0.1'),
        port: z.number().int().min(0).max(65535).default(8080),
        /** Absolute base URL used in `url` results; derived from the request Host when unset. */
        publicBaseUrl: z.url().optional(),
        /** Express `trust proxy` setting, for X-Forwarded-* behind a reverse proxy. */
        trustProxy: z.union([z.boolean(), z.number(), z.string()]).default(false),
        maxBodyBytes: z.number().int().min(1024).default(100 * MiB),
        /** Browser origins allowed to call the API (CORS); empty = closed. `*` allows any. */
        corsOrigins: z.array(z.string().min(1)).default([]),
        /** Sockets with no request activity for this long are closed; must exceed the longest sync job. */
        requestTimeoutMs: z.number().int().min(1000).default(15 * 60_000),
        /**
         * This replica's name among those sharing one database (env PIXELD_REPLICA_ID), recorded on the jobs
         * it accepts and runs. Keep it the same across restarts: a restarting replica recovers only the jobs
         * recorded under its name. Default: `<hostname>:<port>`.
         */
        replicaId: z
          .string()
          .regex(/^[A-Za-z0-9._:@-]{1,128}$/, 'letters, digits and . _ : @ - only, at most 128')
          .optional(),
      })
      .strict()
      .prefault({}),
    tee: z
      .object({
        /**
         * Where the response-signing key lives. `dev`: a key file in the data dir, no quote, marked
         * insecure everywhere; `dstack`: derived by the dstack guest agent; `tdx`: made in-process inside a
         * TDX guest, kept on tmpfs, quoted through configfs-tsm.
         */
        mode: z.enum(['dev', 'dstack', 'tdx']).default('dev'),
        /** Lets `dev` mode start with NODE_ENV=production. Never set this for a real service. */
        allowDevInProduction: z.boolean().default(false),
        dstack: z
          .object({
            /** Unix socket path or http(s) URL of the guest agent; default: the SDK's search (DSTACK_SIMULATOR_ENDPOINT, /var/run/dstack.sock, …). */
            endpoint: z.string().optional(),
            /** Key derivation path; versioned so the signer address stays put across restarts and upgrades. */
            keyPath: z.string().min(1).default('pixeld/signing/v1'),
          })
          .strict()
          .prefault({}),
        tdx: z
          .object({
            /** configfs-tsm report directory. */
            tsmReportDir: z.string().default('/sys/kernel/config/tsm/report'),
            /** The key file; must be on tmpfs inside the TD so it dies with the VM. */
            keyFile: z.string().default('/run/pixeld/tee-signing-key'),
          })
          .strict()
          .prefault({}),
        /** Reports with a caller's nonce need a fresh quote (seconds each, serialised by the kernel). */
        freshReportsPerMinute: z.number().int().min(1).default(30),
        /** Fresh reports per client (IP address, IPv6 /64) a minute; unset: a quarter of freshReportsPerMinute. */
        freshReportsPerClientPerMinute: z.number().int().min(1).optional(),
        /** How long the nonce-less report is reused. */
        cachedReportTtlMs: z.number().int().min(1000).default(10 * 60_000),
      })
      .strict()
      .prefault({}),
    provider: z
      .object({
        /**
         * The provider wallet address this service is registered under on 0G; named in attestation
         * bindings and receipts. The zero address until one is configured.
         */
        address: addressString.default('0x0000000000000000000000000000000000000000'),
        /**
         * The provider wallet: sends the settlement and registration transactions and receives the fees.
         * Never the TEE key. Read from an env var (hex private key) or an encrypted JSON keystore.
         */
        wallet: z
          .object({
            privateKeyEnv: z.string().min(1).default('PIXELD_PROVIDER_KEY'),
            keystoreFile: z.string().optional(),
            keystorePasswordEnv: z.string().min(1).default('PIXELD_KEYSTORE_PASSWORD'),
          })
          .strict()
          .prefault({}),
        /** What `pixeld register` publishes on chain. */
        service: z
          .object({
            /** The public base URL routers call (the service `url` on chain). */
            url: z.url().optional(),
            /** Stake sent with the first registration, in wei. @default 100 0G */
            stakeWei: weiString.default(100n * 10n ** 18n),
            /** Extra fields merged into additionalInfo (≤ 4096 bytes as JSON), e.g. ProviderName, Country. */
            additionalInfo: z.record(z.string(), z.unknown()).default({}),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    billing: z
      .object({
        /** When settlement rounds run (node-cron syntax). Default: every 10 minutes. */
        settlementCron: z.string().default('*/10 * * * *'),
        /** A user whose unsettled fees reach this is settled at once, whatever the schedule. @default 1 0G */
        userThresholdWei: weiString.default(10n ** 18n),
        /** Receipts of one user settled in one round at most (the rest wait for the next). */
        maxReceiptsPerUserPerRound: z.number().int().min(1).default(5_000),
        /** Users per settleFeesWithTEE transaction (the contract takes at most 50). */
        usersPerTransaction: z.number().int().min(1).max(50).default(50),
        /** A settlement transaction not mined after this long is re-sent with a higher fee. */
        txReplaceAfterMs: z.number().int().min(1_000).default(120_000),
        /** Fee increase of a replacement, in percent (nodes need ≥ 10). */
        feeBumpPercent: z.number().int().min(10).max(500).default(25),
        /** Settle a user early when a pending refund of theirs becomes withdrawable within this long. */
        refundGuardMs: z.number().int().min(0).default(15 * 60_000),
        /** Settle a user early when unsettled fees reach this share (percent) of their available balance. */
        lowBalancePercent: z.number().int().min(1).max(100).default(80),
        /** How often users are checked for early settlement (threshold, low balance, refund guard). */
        thresholdCheckIntervalMs: z.number().int().min(1_000).default(30_000),
        /** How often each model's pricePerImageWei is compared with its on-chain outputPrice (also at start). */
        priceCheckIntervalMs: z.number().int().min(1_000).default(5 * 60_000),
        /**
         * The settlement lock (one settler at a time, across processes) expires this long after its last
         * renewal; a settler that died holding it blocks rounds for at most this long.
         */
        settlementLockTtlMs: z.number().int().min(1_000).default(60_000),
      })
      .strict()
      .prefault({}),
    /** Where the SQLite file (without database.url) and the image files live. */
    dataDir: z.string().default('./data'),
    /**
     * The job and billing store: `sqlite` (one file in dataDir) or `postgres` (database.url, shared by
     * replicas). Unset: postgres when database.url is set, else sqlite.
     */
    store: z
      .object({ type: z.enum(['sqlite', 'postgres']).optional() })
      .strict()
      .prefault({}),
    database: z
      .object({
        /** PostgreSQL for the job and billing store (env PIXELD_DATABASE_URL). Unset: embedded SQLite under dataDir. */
        url: z
          .string()
          .regex(/^postgres(?:ql)?:\/\/\S+$/, 'must be a postgres:// URL, e.g. postgres://pixeld@db.internal:5432/pixeld')
          .optional(),
        /** Connections one daemon keeps open to it at most. */
        maxConnections: z.number().int().min(1).max(1_000).default(10),
        /** Opening a connection gives up after this long. */
        connectTimeoutMs: z.number().int().min(100).default(5_000),
      })
      .strict()
      .prefault({}),
    auth: z
      .object({
        /**
         * Who may call. `0g`: 0G session tokens (`Bearer app-sk-…`) checked against the chain; `api-key`:
         * keys from `apiKeys`, for routers that are not on 0G; both at once as a list. `none` lets anyone in
         * as one anonymous owner: development only.
         */
        mode: z
          .union([z.literal('none'), authMethod, z.array(authMethod).min(1)])
          .default('none')
          .transform((m) => (m === 'none' ? [] : Array.isArray(m) ? [...new Set(m)] : [m])),
        /** API keys, stored as their sha256 (never the key itself), or read from an env var at start-up. */
        apiKeys: z.array(apiKeySchema).default([]),
        /** How long an on-chain Account read is trusted: revocations take effect within this. */
        chainCacheMs: z.number().int().min(0).max(60_000).default(10_000),
        /** Tolerated clock difference for a token's `timestamp` lying in the future. */
        maxClockSkewMs: z.number().int().min(0).default(5 * 60_000),
      })
      .strict()
      .prefault({}),
    admin: z
      .object({
        /**
         * sha256 (hex) of the admin token that opens /v1/admin/* (metrics, settle now). Compared as hashes in
         * constant time. Neither this nor tokenEnv set: the admin routes refuse everyone.
         */
        tokenSha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lowercase hex characters').optional(),
        /** Env var holding the admin token itself, read at start-up (instead of tokenSha256). */
        tokenEnv: z.string().min(1).optional(),
      })
      .strict()
      .refine((a) => a.tokenSha256 === undefined || a.tokenEnv === undefined, { message: 'set tokenSha256 or tokenEnv, not both' })
      .prefault({}),
    metrics: z
      .object({
        /**
         * Who may read `GET /metrics` (Prometheus text): `admin` — only with the admin token, like /v1/admin/*;
         * `open` — anyone who reaches the port (a scraper on a private network).
         * @default 'admin'
         */
        access: z.enum(['open', 'admin']).default('admin'),
      })
      .strict()
      .prefault({}),
    chain: z
      .object({
        /** JSON-RPC endpoint of the 0G chain (or any EVM chain with InferenceServing). */
        rpcUrl: z.url().optional(),
        chainId: z.number().int().min(1).optional(),
        /** Address of the InferenceServing contract. */
        servingAddress: addressString.optional(),
        /** One RPC call gives up after this long. */
        rpcTimeoutMs: z.number().int().min(100).default(5_000),
      })
      .strict()
      .prefault({}),
    rateLimits: z
      .object({
        /** Submits one owner may make per minute (sync and async together). */
        requestsPerMinute: z.number().int().min(1).default(600),
        /** Images (sum of n) one owner may ask for per minute. */
        imagesPerMinute: z.number().int().min(1).default(1_200),
      })
      .strict()
      .prefault({}),
    log: z
      .object({
        level: z.enum(['error', 'warn', 'info', 'debug']).default('info'),
        /** json: one JSON object per line; pretty: readable lines, coloured on a terminal; auto: pretty on a terminal. */
        format: z.enum(['auto', 'json', 'pretty']).default('auto'),
        /** One info line per HTTP request (health probes and /metrics at debug). */
        requests: z.boolean().default(true),
        /** Whether a job's prompt (and negative prompt) is written into its queued line: users' text, off by default. */
        prompts: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
    limits: z
      .object({
        maxInputImages: z.number().int().min(1).max(16).default(16),
        maxInputImageBytes: z.number().int().min(1).default(50 * MiB),
        /** Width × height above which an input is refused without being decoded. */
        maxInputPixels: z.number().int().min(1).default(40_000_000),
        maxPromptChars: z.number().int().min(1).default(32_000),
        /**
         * Free space under the data dir below which submits get 507 insufficient_storage: what is left is
         * kept for the results of jobs already accepted.
         */
        minFreeDiskBytes: z.number().int().min(0).default(64 * MiB),
        /**
         * Whether a JSON edit's `image_url` may be an https URL the daemon downloads (from public addresses
         * only; see src/images/fetch-remote-image.ts). Off, only base64 data: URLs are accepted. Its size
         * limit is maxInputImageBytes, as for an upload.
         */
        fetchRemoteImages: z.boolean().default(false),
        /** One remote image's whole download, every redirect and DNS lookup included. */
        remoteImageTimeoutMs: z.number().int().min(100).default(15_000),
        /** Redirects followed for one remote image; every hop's address is checked again. */
        remoteImageMaxRedirects: z.number().int().min(0).max(10).default(3),
      })
      .strict()
      .prefault({}),
    jobs: z
      .object({
        /** How long results (images) are kept after a job ends. */
        resultTtlMs: z.number().int().min(1000).default(60 * 60_000),
        /** How long job records (status, and later signatures and receipts) are kept. */
        recordRetentionMs: z.number().int().min(1000).default(30 * 24 * 60 * 60_000),
        /** One backend attempt is aborted after this long. */
        attemptTimeoutMs: z.number().int().min(100).default(5 * 60_000),
        /**
         * A running job's lease: renewed every third of it while the attempt runs, so a runner that died (a
         * crashed replica) loses the job this long after its last renewal, and another replica takes it.
         */
        leaseMs: z.number().int().min(300).default(30_000),
        /** Attempts per job, including the first, for transient backend failures. */
        maxAttempts: z.number().int().min(1).max(10).default(3),
        retryBackoffMs: z.number().int().min(0).default(2_000),
        /** Extra backend calls allowed when a backend returns fewer images than asked. */
        maxTopUpCalls: z.number().int().min(0).max(10).default(2),
        sweepIntervalMs: z.number().int().min(100).default(60_000),
        /**
         * A blob file no job references is deleted only once it is this old, so a file written a moment
         * before its job row is never swept in between.
         */
        orphanGraceMs: z.number().int().min(0).default(10 * 60_000),
        /** Longest `?wait=` a poll may ask for. */
        maxLongPollSeconds: z.number().int().min(1).max(600).default(60),
        /** Longest one job event stream (GET …/events) stays open; the client then reconnects with Last-Event-ID. */
        eventStreamMaxSeconds: z.number().int().min(1).max(3600).default(600),
        /** Job event streams one owner may hold open on one replica at a time; more get 429. */
        maxEventStreamsPerOwner: z.number().int().min(1).max(1000).default(10),
        /** How long an Idempotency-Key is remembered. */
        idempotencyTtlMs: z.number().int().min(1000).default(24 * 60 * 60_000),
      })
      .strict()
      .prefault({}),
    webhooks: z
      .object({
        /**
         * Where webhook URLs may point besides the public internet: CIDRs (`10.20.0.0/16`), single addresses, or
         * host names (which may then resolve to any address). For receivers on the provider's own network.
         */
        allowPrivate: z.array(webhookAllowEntry).default([]),
        /** A webhook URL per API-key owner, for that owner's jobs whose submit names none. */
        ownerUrls: z.record(ownerId, webhookUrl).default({}),
        /** One delivery attempt, connection and answer included. */
        attemptTimeoutMs: z.number().int().min(100).default(10_000),
        /** How long a delivery is retried after the job ended before it is given up. */
        retryForMs: z.number().int().min(0).default(24 * 60 * 60_000),
        /** Wait before the second attempt; doubles with each further one (with jitter), up to maxRetryDelayMs. */
        firstRetryDelayMs: z.number().int().min(100).default(5_000),
        maxRetryDelayMs: z.number().int().min(100).default(60 * 60_000),
        /** How often the delivery worker looks for due deliveries. */
        pollIntervalMs: z.number().int().min(10).default(1_000),
        /** Deliveries one replica attempts at once. */
        maxConcurrentDeliveries: z.number().int().min(1).max(256).default(8),
      })
      .strict()
      .prefault({}),
    backends: z.array(backendSchema).min(1),
    models: z.array(modelSchema).min(1),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    if (cfg.store.type === 'postgres' && cfg.database.url === undefined) {
      ctx.addIssue({ code: 'custom', message: 'required when store.type is "postgres" (or env PIXELD_DATABASE_URL)', path: ['database', 'url'] });
    }
    if (cfg.store.type === 'sqlite' && cfg.database.url !== undefined) {
      ctx.addIssue({
        code: 'custom',
        message: 'is "sqlite" but database.url (or env PIXELD_DATABASE_URL) names a PostgreSQL database: remove one of them',
        path: ['store', 'type'],
      });
    }
    if (cfg.jobs.recordRetentionMs < cfg.jobs.resultTtlMs) {
      ctx.addIssue({
        code: 'custom',
        message: `must be at least jobs.resultTtlMs (${cfg.jobs.resultTtlMs}): a job's signature must outlive its images`,
        path: ['jobs', 'recordRetentionMs'],
      });
    }
    if (cfg.auth.mode.includes('0g')) {
      for (const key of ['rpcUrl', 'chainId', 'servingAddress'] as const) {
        if (cfg.chain[key] === undefined) {
          ctx.addIssue({ code: 'custom', message: 'required when auth.mode includes "0g"', path: ['chain', key] });
        }
      }
    }
    if (cfg.auth.mode.includes('api-key') && cfg.auth.apiKeys.length === 0) {
      ctx.addIssue({ code: 'custom', message: 'auth.mode includes "api-key" but no keys are configured', path: ['auth', 'apiKeys'] });
    }
    const backendIds = new Set<string>();
    const sharedStore = cfg.store.type === 'postgres' || (cfg.store.type === undefined && cfg.database.url !== undefined);
    cfg.backends.forEach((b, i) => {
      if (backendIds.has(b.id)) ctx.addIssue({ code: 'custom', message: `duplicate backend id "${b.id}"`, path: ['backends', i, 'id'] });
      backendIds.add(b.id);
      if (b.concurrency === 0 && !sharedStore) {
        ctx.addIssue({
          code: 'custom',
          message: '0 means another replica runs this backend\'s jobs, which needs a database shared with it (database.url); on SQLite nothing would run them',
          path: ['backends', i, 'concurrency'],
        });
      }
    });
    const modelIds = new Set<string>();
    cfg.models.forEach((m, i) => {
      if (modelIds.has(m.id)) ctx.addIssue({ code: 'custom', message: `duplicate model id "${m.id}"`, path: ['models', i, 'id'] });
      modelIds.add(m.id);
      if (!backendIds.has(m.backend)) {
        ctx.addIssue({ code: 'custom', message: `unknown backend "${m.backend}"`, path: ['models', i, 'backend'] });
      }
    });
  });

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
export type BackendConfig = z.output<typeof backendSchema>;
export type ReferenceBackendConfig = z.output<typeof referenceBackendSchema>;
export type OpenAIBackendConfig = z.output<typeof openaiBackendSchema>;
export type ComfyUIBackendConfig = z.output<typeof comfyuiBackendSchema>;
export type A1111BackendConfig = z.output<typeof a1111BackendSchema>;
export type SiliconFlowBackendConfig = z.output<typeof siliconflowBackendSchema>;
export type ModelConfig = z.output<typeof modelSchema>;

/** What `npm start` runs with when there is no config file: one reference backend, two models, no auth. */
export const DEVELOPMENT_DEFAULTS: ConfigInput = {
  backends: [{ id: 'reference', type: 'reference', concurrency: 2, latencyMsPerImage: 200 }],
  models: [
    {
      id: 'reference-image-1',
      backend: 'reference',
      capabilities: ['generation', 'edit'],
      sizes: ['256x256', '512x512', '1024x1024', '1024x1536', '1536x1024'],
      defaultSize: '1024x1024',
      maxN: 4,
      description: 'Built-in reference renderer (no GPU): deterministic pictures for smoke tests and demos',
    },
  ],
};
