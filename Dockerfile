# syntax=docker/dockerfile:1
# One image for every dhm role; the command selects it: `api`, `worker`, `scheduler`, `agents --fleet <file>`.
#   docker build -t dhm .
#   docker run --rm dhm --help
# docker-compose.yml runs the whole production topology from it (docs/operations.md).

# Node 22 LTS: Node 20 is past its end of life, and some dependencies already require 22 (cookie, via fastify).
ARG NODE_IMAGE=node:22-bookworm-slim

# ---- build: all dependencies, TypeScript → dist/ (tsconfig.build.json) ----
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
COPY scripts/allowed-install-scripts.js ./scripts/
# No dependency's install script runs, except those package.json's allowScripts names (run explicitly after).
RUN npm ci --ignore-scripts --no-audit --no-fund && node scripts/allowed-install-scripts.js
COPY tsconfig.json tsconfig.build.json ./
COPY activities ./activities
COPY api ./api
COPY cli ./cli
COPY client ./client
COPY stack ./stack
COPY common ./common
COPY compute ./compute
COPY inventory ./inventory
COPY scripts ./scripts
COPY workers ./workers
COPY workflows ./workflows
RUN npm run build

# ---- runtime: production dependencies, the compiled code and the files it reads at run time ----
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    DHM_HOME=/var/lib/dhm \
    DHM_TOOLS_DIR=/var/lib/dhm/tools
WORKDIR /app
COPY package.json package-lock.json ./
COPY scripts/allowed-install-scripts.js ./scripts/
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && node scripts/allowed-install-scripts.js && npm cache clean --force
COPY bin ./bin
COPY --from=build /src/dist ./dist
# Read at run time, found from dist/ one level up (inventory/migrate.ts, inventory/fleet-file.ts).
COPY inventory/migrations ./inventory/migrations
COPY inventory/fleets ./inventory/fleets
COPY deploy/fleet.compose.json ./deploy/fleet.compose.json
# Non-root; a writable home for the (unused in production) embedded state folder.
# A fixed uid: compose runs Temporal's containers with it, so they read the keys the pki job writes (0600).
# /pki's folders exist in the image, the user's and 0700, so Docker seeds the named volumes mounted there with them.
RUN groupadd --system --gid 10001 dhm && useradd --system --uid 10001 --gid dhm --home-dir /var/lib/dhm --create-home dhm \
 && mkdir -p /pki/ca /pki/servers /pki/control-plane /pki/temporal/ca /pki/temporal/server /pki/temporal/client /pki/temporal/ui \
 && chown -R dhm:dhm /pki && chmod -R 0700 /pki
USER dhm
# 7780: API · 7801-7899: host agents (fleet file) · 9464: /healthz /readyz /metrics · 9465: Temporal SDK metrics
EXPOSE 7780 9464 9465
ENTRYPOINT ["node", "bin/dhm.js"]
CMD ["--help"]
