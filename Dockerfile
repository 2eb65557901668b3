# syntax=docker/dockerfile:1
# One image for every dhm role; the command selects it: `api`, `worker`, `scheduler`, `agents --fleet <file>`.
#   docker build -t dhm .
#   docker run --rm dhm --help
# docker-compose.yml runs the whole production topology from it (docs/operations.md).

ARG NODE_IMAGE=node:20-bookworm-slim

# ---- build: all dependencies, TypeScript → dist/ (tsconfig.build.json) ----
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
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
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY bin ./bin
COPY --from=build /src/dist ./dist
# Read at run time, found from dist/ one level up (inventory/migrate.ts, inventory/fleet-file.ts).
COPY inventory/migrations ./inventory/migrations
COPY inventory/fleets ./inventory/fleets
COPY deploy/fleet.compose.json ./deploy/fleet.compose.json
# Non-root; a writable home for the (unused in production) embedded state folder.
RUN groupadd --system dhm && useradd --system --gid dhm --home-dir /var/lib/dhm --create-home dhm
USER dhm
# 7780: API · 7801-7899: host agents (fleet file) · 9464: /healthz /readyz /metrics · 9465: Temporal SDK metrics
EXPOSE 7780 9464 9465
ENTRYPOINT ["node", "bin/dhm.js"]
CMD ["--help"]
