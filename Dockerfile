# syntax=docker/dockerfile:1
# One image for every role of thinpool-csi (controller + pool, node plugin, CLI).
#   docker build -t <registry>/thinpool-csi:0.1.0 --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
# Not built on the project's own machines (no docker engine there): see docs/install.md.

ARG NODE_IMAGE=node:20-bookworm-slim

# ---- build: dev dependencies, TypeScript compile, then drop the dev dependencies ----
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY tsconfig.json tsconfig.build.json ./
COPY proto ./proto
COPY src ./src
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund --loglevel=error

# ---- native: the kernel NBD reconnection helper (native/nbd-reconnect.c) ----
FROM debian:bookworm-slim AS native
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
COPY native/nbd-reconnect.c /src/
RUN gcc -O2 -Wall -Wextra -o /usr/local/bin/nbd-reconnect /src/nbd-reconnect.c

# ---- runtime: production dependencies and the host tools the driver runs ----
FROM ${NODE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="thinpool-csi" \
      org.opencontainers.image.description="Kubernetes CSI driver: thin volumes in a userspace dm-thin-format pool, served over NBD" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${NODE_IMAGE}"

# nbd-client (kernel NBD attach), libnbd-bin (nbdinfo, nbdfuse), fuse3 (fusermount3), util-linux and
# mount (blkid, blockdev, losetup, mount), e2fsprogs and xfsprogs (mkfs, grow), thin-provisioning-tools
# (thin_check & co. for operators). perl-base, used for the loop ioctls, is already in the base image.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      nbd-client libnbd-bin fuse3 util-linux mount e2fsprogs xfsprogs thin-provisioning-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/proto ./proto
# The node plugin runs it beside every kernel NBD attachment (docs/node.md).
COPY --from=native /usr/local/bin/nbd-reconnect /usr/local/bin/nbd-reconnect

# For `docker run ... serve --metrics-listen 0.0.0.0:9810`; Kubernetes ignores it and uses the
# livenessprobe sidecar instead. THINPOOL_HEALTH_PORT names another port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.THINPOOL_HEALTH_PORT || 9810) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# Runs as root: the node plugin needs nbd-client, losetup and mount on the host's devices (the
# manifests run it privileged); the controller needs root for the hostPath pool.
ENTRYPOINT ["node", "/app/dist/cli/main.js"]
CMD ["--help"]
