# syntax=docker/dockerfile:1
#
# pixeld container image.
#
#   docker build -t pixeld .
#   docker run -p 8080:8080 -v pixeld-data:/data \
#     -v "$PWD/config/pixeld.yaml:/app/config/pixeld.yaml:ro" pixeld
#
# Configuration: the daemon reads /app/config/pixeld.yaml when it exists (mount your own; see
# config/pixeld.example.yaml), or the file named by PIXELD_CONFIG. Without either it runs the built-in
# development defaults (the reference renderer, no auth) and says so loudly in its log.
# HOST, PORT and PIXELD_DATA_DIR below override the file; keep the data dir on the /data volume.
# No config file or secret is baked into the image (.dockerignore keeps config/pixeld.yaml out).

ARG NODE_IMAGE=node:20-bookworm-slim

# ---------------------------------------------------------------------------------------------------
# Build: compile TypeScript, then drop the dev dependencies. Native modules (better-sqlite3, sharp) are
# installed here, on the same base image as the runtime stage, so their binaries match it.
FROM ${NODE_IMAGE} AS build

# better-sqlite3 downloads a prebuilt binary when one matches; these build it from source when none does.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# `npm ci` runs the package's `prepare` script (tsc), so the sources must be in place before it.
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund
# prepare already built dist/; building again is explicit and, being incremental, costs nothing.
RUN npm run build
# --ignore-scripts: pruning must not re-run `prepare`, whose compiler is one of the removed dev deps.
RUN npm prune --omit=dev --ignore-scripts --no-audit --no-fund \
 && rm -f dist/.tsbuildinfo

# ---------------------------------------------------------------------------------------------------
# Runtime: compiled JS and production node_modules only; no compiler, no npm install, no root.
FROM ${NODE_IMAGE} AS runtime

ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    PIXELD_DATA_DIR=/data

RUN groupadd --system pixeld \
 && useradd --system --gid pixeld --home-dir /app --no-create-home --shell /usr/sbin/nologin pixeld \
 && mkdir -p /data \
 && chown pixeld:pixeld /data

WORKDIR /app

# Owned by root and read-only for the daemon's user: it writes nowhere but /data.
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY bin ./bin
# The contract ABI is read at run time (src/chain/serving-contract.ts).
COPY contracts-abi ./contracts-abi
COPY config ./config

# glibc would keep freed multi-MB image buffers in its heap once its mmap threshold had grown to their
# size (~100 MiB after a thousand 1024² jobs); fixed at 1 MiB, it hands them back (bench: memory).
ENV MALLOC_MMAP_THRESHOLD_=1048576

USER pixeld

# Declared after /data got its owner, so a new volume starts out writable by pixeld.
VOLUME /data
EXPOSE 8080

# The slim image has no curl: ask node. /healthz says the process serves HTTP (not that backends are up;
# that is /readyz, which orchestrators should use for routing).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/healthz', { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# node runs as PID 1 and handles SIGTERM itself (graceful stop: running jobs are re-queued for the next start).
CMD ["node", "--initial-old-space-size=128", "dist/cli.js", "serve"]
