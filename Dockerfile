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

#
# Reproducible build (see README, "Docker"): the same commit gives the same image digest as far as the
# toolchain allows, when built with BuildKit (buildx ≥ 0.13) as
#
#   docker buildx build --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) \
#     --output type=oci,dest=pixeld.oci.tar,rewrite-timestamp=true .
#   pixeld measurements --oci pixeld.oci.tar
#
# What makes it so: the base image pinned by digest (below); dependencies locked (`npm ci` installs exactly
# package-lock.json, integrity-checked); SOURCE_DATE_EPOCH, which BuildKit uses for the image config's
# timestamps and, with rewrite-timestamp=true, clamps every file's mtime in the layers to.
# What can still vary (not checked here — there is no Docker engine on the machines this was written on):
#  - native modules: better-sqlite3's install script downloads a prebuilt binary (not covered by the
#    lockfile's integrity hashes) and, when none matches, compiles one with the apt-installed g++, whose
#    version `apt-get update` takes from the Debian mirror on the day of the build;
#  - anything a RUN step writes with the current time and does not take from SOURCE_DATE_EPOCH;
#  - buildx's provenance attestation (on by default for OCI output) records the build; pass
#    --provenance=false to compare image digests across builders, or compare the platform manifest digest
#    `pixeld measurements --oci` prints.

# node:20-bookworm-slim, pinned by digest (the multi-platform index). Refresh it deliberately, not by
# accident: `docker buildx imagetools inspect node:20-bookworm-slim` prints the current digest; put it here
# and rebuild. This digest is the one public Dockerfiles pin for node:20-bookworm-slim (= node:20-slim;
# node 20.20.2, per a Dockerfile pinning it as node:20.20.2-slim), and public BuildKit logs show it resolving;
# it could not be checked against the registry from the machine it was written on.
ARG NODE_IMAGE=node:20-bookworm-slim@sha256:2cf067cfed83d5ea958367df9f966191a942351a2df77d6f0193e162b5febfc0

# ---------------------------------------------------------------------------------------------------
# Build: compile TypeScript, then drop the dev dependencies. Native modules (better-sqlite3, sharp) are
# installed here, on the same base image as the runtime stage, so their binaries match it.
FROM ${NODE_IMAGE} AS build
# Declared so RUN steps see it (BuildKit itself reads the build arg either way).
ARG SOURCE_DATE_EPOCH

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
# useradd writes a password-change date (days since 1970) into /etc/shadow; recent shadow-utils take it
# from SOURCE_DATE_EPOCH when set instead of today's date (not verified here for bookworm's version: if two
# builds on different days differ, this line is the first place to look).
ARG SOURCE_DATE_EPOCH

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
