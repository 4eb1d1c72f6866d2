# pg-reactor image: compiled JavaScript and production dependencies only (no TypeScript
# runtime, no embedded Postgres: DATABASE_URL is required), non-root, and nothing written
# at run time, so it runs with a read-only root filesystem:
#   docker run --read-only -e DATABASE_URL=postgres://… -p 8080:8080 pg-reactor

# Build: the full dependency tree, then tsc to dist/ (type-checked).
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# No install scripts: the build only needs typescript and type definitions.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# Production dependencies only.
FROM node:20-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:20-bookworm-slim
ENV NODE_ENV=production
# In a container the status server must answer on the pod's address, not loopback:
# probes and -p 8080:8080 reach it there.
ENV HTTP_HOST=0.0.0.0
# Four malloc arenas instead of up to 8 per core: less idle memory (src/runtime-flags.ts).
ENV MALLOC_ARENA_MAX=4
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY drizzle ./drizzle
COPY sql ./sql
# The operator console: HTML, CSS and an ES module read at start (uPlot comes from node_modules).
COPY console ./console
USER node
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.HTTP_PORT||8080)+'/health/live').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# Exec form, no shell: SIGTERM goes straight to Node, whose handler drains and exits 0.
CMD ["node", "--max-semi-space-size=2", "--heap-growing-percent=30", "dist/main.js"]
