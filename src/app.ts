// Builds a running reactor from validated settings and a database URL: pools, settings,
// workloads, reactor and status server. main.ts adds the process concerns (embedded
// Postgres, migrate, signals); tests call this directly to run reactors in-process.
import { randomBytes } from "node:crypto";
import type { Env } from "./config/env.js";
import { makePool, type Pool } from "./db/pool.js";
import type { Logger } from "./logger.js";
import { type Metrics, makeMetrics } from "./metrics.js";
import { makeAgent } from "./outbound/http.js";
import { makeShipStationAccount } from "./outbound/shipstation-account.js";
import { makeShipStationClient } from "./outbound/shipstation-client.js";
import { makeAddressPolicy } from "./outbound/ssrf.js";
import type { DrainerEvent } from "./reactor/drainer.js";
import { makePeriodicJobs } from "./reactor/periodic.js";
import { makeSharedRateLimiter } from "./reactor/rate-limit.js";
import { makeReactor, type Reactor } from "./reactor/reactor.js";
import { type LiveSettings, makeLiveSettings } from "./reactor/settings.js";
import { USER_AGENT } from "./version.js";
import { SETTINGS, type Settings, SOURCES, WORKLOADS } from "./workloads/index.js";
import type {
  ModuleParts,
  SourceInstance,
  SourceModule,
  WorkloadContext,
  WorkloadInstance,
  WorkloadModule,
} from "./workloads/module.js";

/** A workload module and what it built for this process. */
export interface RunningModule {
  module: WorkloadModule;
  instance: WorkloadInstance;
}

/** An inbound source (the XML folder import) and what it built for this process. */
export interface RunningSource {
  module: SourceModule;
  instance: SourceInstance;
}

export interface App {
  env: Env;
  logger: Logger;
  pool: Pool;
  settings: LiveSettings<Settings>;
  metrics: Metrics;
  reactor: Reactor;
  /** Every workload of WORKLOADS, as built for this process. */
  modules: readonly RunningModule[];
  /** Every source of SOURCES, as built for this process. */
  sources: readonly RunningSource[];
  /** What the workloads and the sources bring besides queues: routes, jobs, status. */
  parts: ReadonlyArray<{ name: string; instance: ModuleParts }>;
  owner: string;
  startedAt: Date;
  start(): Promise<void>;
  stop(graceMs?: number): Promise<void>;
}

export interface AppOptions {
  env: Env;
  databaseUrl: string;
  logger: Logger;
  listenerCheckIntervalMs?: number;
  onDrainerEvent?: (event: DrainerEvent) => void;
}

/** How long in-flight work may take to finish on shutdown before leases are released. */
export const SHUTDOWN_GRACE_MS = 20_000;

export function makeApp(options: AppOptions): App {
  const { env, logger } = options;
  const metrics = makeMetrics();
  // LISTEN_DATABASE_URL set apart from DATABASE_URL means a pooler stands in front of
  // the pool (the README's PgBouncer recipe): its statements stay unnamed there.
  const pool = makePool(options.databaseUrl, logger, {
    direct: !env.listenDatabaseUrl || env.listenDatabaseUrl === options.databaseUrl,
  });
  const settings = makeLiveSettings(pool, SETTINGS, logger, metrics);
  settings.onChange((changes) => {
    const level = changes.find((c) => c.name === "log_level");
    if (level) logger.level = String(level.to);
  });
  // Unique per process even if two replicas are given the same INSTANCE_ID by mistake.
  const owner = `${env.instanceId}/${randomBytes(3).toString("hex")}`;
  const { apiKey, apiSecret, baseUrl } = env.shipstation;
  const shipstation = makeShipStationAccount({
    client:
      apiKey && apiSecret
        ? makeShipStationClient({
            baseUrl,
            apiKey,
            apiSecret,
            agent: makeAgent({ connections: 16 }),
            userAgent: USER_AGENT,
          })
        : null,
    // ShipStation's limit belongs to the key pair: one budget for every replica using it.
    limiter: makeSharedRateLimiter(pool, "shipstation"),
    perMinute: () => settings.current.upload_rate_limit_per_minute,
    logger,
    metrics,
  });
  const directDatabaseUrl = env.listenDatabaseUrl ?? options.databaseUrl;
  const context: WorkloadContext<Settings> = {
    env,
    pool,
    settings: settings.current,
    logger,
    metrics,
    owner,
    shipstation,
    // One SSRF policy for the pre-check and the connect step.
    addressPolicy: makeAddressPolicy(env),
    directDatabaseUrl,
  };
  const modules: RunningModule[] = WORKLOADS.map((module) => ({
    module,
    instance: module.create(context),
  }));
  const sources: RunningSource[] = SOURCES.map((module) => ({
    module,
    instance: module.create(context),
  }));
  const parts = [...modules, ...sources].map(({ module, instance }) => ({
    name: module.name,
    instance: instance as ModuleParts,
  }));
  const jobs = makePeriodicJobs(
    parts.flatMap((m) => m.instance.jobs ?? []),
    logger,
  );
  const reactor = makeReactor({
    pool,
    listenUrl: directDatabaseUrl,
    owner,
    settings,
    workloads: modules.map((m) => m.instance.workload),
    logger,
    metrics,
    listenerCheckIntervalMs: options.listenerCheckIntervalMs,
    onDrainerEvent: options.onDrainerEvent,
  });
  const app: App = {
    env,
    logger,
    pool,
    settings,
    metrics,
    reactor,
    modules,
    sources,
    parts,
    owner,
    startedAt: new Date(),
    async start() {
      if (!shipstation.client) {
        logger.warn(
          "SHIPSTATION_API_KEY and SHIPSTATION_API_SECRET are not set: ShipStation calls are PAUSED (orders wait as pending, shipments are not fetched)",
        );
      }
      // Settings are loaded before this returns; the start catch-up drains whatever is due
      // and its stats arm the timers for what is due later.
      await reactor.start();
      jobs.start();
      for (const { instance } of parts) void instance.afterStart?.();
    },
    async stop(graceMs = SHUTDOWN_GRACE_MS) {
      await Promise.all(parts.map(({ instance }) => instance.stop?.()));
      await jobs.stop();
      await reactor.stop(graceMs);
      await pool.end();
    },
  };
  return app;
}
