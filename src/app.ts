// Builds a running reactor from validated settings and a database URL: pools, settings,
// workloads, reactor and status server. main.ts adds the process concerns (embedded
// Postgres, migrate, signals); tests call this directly to run reactors in-process.
import { randomBytes } from "node:crypto";
import type { Env } from "./config/env.js";
import { makePool, type Pool } from "./db/pool.js";
import type { Logger } from "./logger.js";
import { type Metrics, makeMetrics } from "./metrics.js";
import { makeAgent } from "./outbound/http.js";
import { makeShipStationClient } from "./outbound/shipstation-client.js";
import { makeAddressPolicy } from "./outbound/ssrf.js";
import type { DrainerEvent } from "./reactor/drainer.js";
import { makeSharedRateLimiter } from "./reactor/rate-limit.js";
import { makeReactor, type Reactor } from "./reactor/reactor.js";
import { type LiveSettings, makeLiveSettings } from "./reactor/settings.js";
import { USER_AGENT } from "./version.js";
import { makeDeliveriesQueue } from "./workloads/deliveries/queue.js";
import { makeDeliveriesWorkload } from "./workloads/deliveries/workload.js";
import { makeOrdersQueue } from "./workloads/uploads/queue.js";
import { makeUploadsWorkload } from "./workloads/uploads/workload.js";

export interface App {
  env: Env;
  logger: Logger;
  pool: Pool;
  settings: LiveSettings;
  metrics: Metrics;
  reactor: Reactor;
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
  const pool = makePool(options.databaseUrl, logger);
  const settings = makeLiveSettings(pool, logger, metrics);
  settings.onChange((changes) => {
    const level = changes.find((c) => c.name === "log_level");
    if (level) logger.level = String(level.to);
  });
  // Unique per process even if two replicas are given the same INSTANCE_ID by mistake.
  const owner = `${env.instanceId}/${randomBytes(3).toString("hex")}`;
  const { apiKey, apiSecret, baseUrl } = env.shipstation;
  const shipstation =
    apiKey && apiSecret
      ? makeShipStationClient({
          baseUrl,
          apiKey,
          apiSecret,
          agent: makeAgent({ connections: 16 }),
          userAgent: USER_AGENT,
        })
      : null;
  const uploads = makeUploadsWorkload({
    queue: makeOrdersQueue(pool),
    settings: settings.current,
    client: shipstation,
    // ShipStation's limit belongs to the key pair: one budget for every replica using it.
    limiter: makeSharedRateLimiter(pool, "shipstation"),
    logger,
    metrics,
  });
  // One SSRF policy for the pre-check and the connect step.
  const addressPolicy = makeAddressPolicy(env);
  const deliveries = makeDeliveriesWorkload({
    pool,
    queue: makeDeliveriesQueue(pool),
    settings: settings.current,
    // The SSRF guard checks the address actually dialled, so DNS rebinding cannot reach a
    // private network; WEBHOOK_ALLOWED_NETWORKS widens it, ..._ALLOW_PRIVATE_NETWORKS lifts it.
    agent: makeAgent({ connections: 64, guard: addressPolicy }),
    addressPolicy,
    logger,
    metrics,
  });
  const reactor = makeReactor({
    pool,
    listenUrl: env.listenDatabaseUrl ?? options.databaseUrl,
    owner,
    settings,
    workloads: [uploads, deliveries],
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
    owner,
    startedAt: new Date(),
    async start() {
      if (!shipstation) {
        logger.warn(
          "SHIPSTATION_API_KEY and SHIPSTATION_API_SECRET are not set: uploads are PAUSED and orders wait as pending",
        );
      }
      // Settings are loaded before this returns; the start catch-up drains whatever is due
      // and its stats arm the timers for what is due later.
      await reactor.start();
    },
    async stop(graceMs = SHUTDOWN_GRACE_MS) {
      await reactor.stop(graceMs);
      await pool.end();
    },
  };
  return app;
}
