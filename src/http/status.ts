// /status: what a person wants to know about this replica, as JSON. Never a secret:
// settings come from configuration_params (no secrets there), the environment only as
// booleans and non-secret values.
import type { App } from "../app.js";
import { redactUrl } from "../logger.js";
import { withTimeout } from "../reactor/backoff.js";
import { VERSION } from "../version.js";

/** The counts give up after this long: /status answers (without them) even on a silent database. */
const COUNTS_TIMEOUT_MS = 2_000;

/** Rows per state of each work table; queried only when someone asks for /status. */
async function countsByState(app: App): Promise<Record<string, Record<string, number>>> {
  const entries = await Promise.all(
    app.reactor.workloads.map(async (w) => [w.name, await w.queue.countsByState()] as const),
  );
  return Object.fromEntries(entries);
}

/**
 * What a workload adds to its entry (the shipments watermark), and what a source says
 * about itself (the import folder); an error is shown, not thrown.
 */
async function moduleStatus(app: App): Promise<Record<string, Record<string, unknown>>> {
  const entries = await Promise.all(
    app.parts.map(async ({ name, instance }) => {
      if (!instance.status) return [name, {}] as const;
      try {
        return [
          name,
          await withTimeout(
            instance.status(),
            COUNTS_TIMEOUT_MS,
            `no answer within ${COUNTS_TIMEOUT_MS} ms`,
          ),
        ] as const;
      } catch (err) {
        return [name, { statusError: (err as Error).message }] as const;
      }
    }),
  );
  return Object.fromEntries(entries);
}

/**
 * /status. `counts: false` leaves out the rows per state (a scan of each work table): the
 * console asks every few seconds and counts only failed rows, on their own index.
 */
export async function buildStatus(app: App, options: { counts?: boolean } = {}) {
  let counts: Record<string, Record<string, number>> | null = null;
  let countsError: string | null = null;
  // Side by side: on a silent database each gives up after COUNTS_TIMEOUT_MS, together
  // instead of one after the other.
  const [countsResult, extras] = await Promise.all([
    options.counts === false
      ? { value: null }
      : withTimeout(
          countsByState(app),
          COUNTS_TIMEOUT_MS,
          `no answer within ${COUNTS_TIMEOUT_MS} ms`,
        )
          .then((value) => ({ value }))
          .catch((err: Error) => ({ error: err })),
    moduleStatus(app),
  ]);
  if ("value" in countsResult) counts = countsResult.value;
  else countsError = `database unreachable: ${countsResult.error.message}`;
  const ls = app.reactor.listener().state();
  const workloads: Record<string, unknown> = {};
  for (const workload of app.reactor.workloads) {
    const d = app.reactor.drainers.get(workload.name)?.state();
    workloads[workload.name] = {
      enabled: workload.enabled(),
      disabledReason: workload.disabledReason(),
      backlog: d?.lastStats?.backlog ?? null,
      oldestPendingAgeSeconds: d?.lastStats?.oldestPendingAgeSeconds ?? null,
      nextDueAt: d?.lastStats?.nextDueAt ?? null,
      pendingDue: d?.lastStats?.due ?? null,
      failed: counts?.[workload.name]?.failed ?? (counts ? 0 : null),
      countsByState: counts?.[workload.name] ?? null,
      inFlight: d?.inFlightRows ?? 0,
      lastNotificationAt: d?.lastNotifyAt ?? null,
      lastPollAt: app.reactor.poll.lastPollAt(),
      draining: d?.running ?? false,
      lastWakeAt: d?.lastWakeAt ?? null,
      lastWakeReason: d?.lastWakeReason ?? null,
      lastError: d?.lastError ?? null,
      failingSince: d?.failingSince ?? null,
      lastProgressAt: d?.lastProgressAt ?? null,
      waitingOnLocks: d?.waitingOnLocks ?? null,
      pausedUntil: workload.pausedUntil() ? new Date(workload.pausedUntil()) : null,
      pauseReason: workload.pausedUntil() ? (workload.pauseReason?.() ?? null) : null,
      ...extras[workload.name],
    };
  }
  return {
    instanceId: app.env.instanceId,
    owner: app.owner,
    version: VERSION,
    uptimeSeconds: Math.round((Date.now() - app.startedAt.getTime()) / 1000),
    process: {
      rssBytes: process.memoryUsage().rss,
      heapUsedBytes: process.memoryUsage().heapUsed,
      dbPool: {
        total: app.pool.totalCount,
        idle: app.pool.idleCount,
        waiting: app.pool.waitingCount,
      },
    },
    settings: { ...app.settings.current },
    settingsReloadedAt: app.settings.lastReloadAt(),
    environment: {
      httpHost: app.env.httpHost,
      httpPort: app.env.httpPort,
      shipstationBaseUrl: redactUrl(app.env.shipstation.baseUrl),
      shipstationCredentials: Boolean(app.env.shipstation.apiKey && app.env.shipstation.apiSecret),
      adminRoutes: Boolean(app.env.adminToken),
      webhookAllowPrivateNetworks: app.env.webhookAllowPrivateNetworks,
      webhookAllowedNetworks: app.env.webhookAllowedNetworks,
      separateListenUrl: Boolean(app.env.listenDatabaseUrl),
    },
    listener: { ...ls },
    wakeSource: app.reactor.wakeSource(),
    // Only in `wal` mode: the replication stream, its temporary slot, and what keeps it down.
    ...(app.reactor.wakeSource() === "wal" ? { wal: app.reactor.wal.state() } : {}),
    lastPollAt: app.reactor.poll.lastPollAt(),
    countsError,
    workloads,
    sources: Object.fromEntries(
      app.sources.map(({ module }) => [module.name, extras[module.name]]),
    ),
  };
}
