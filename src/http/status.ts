// /status: what a person wants to know about this replica, as JSON. Never a secret:
// settings come from configuration_params (no secrets there), the environment only as
// booleans and non-secret values.
import type { App } from "../app.js";
import { redactUrl } from "../logger.js";
import { VERSION } from "../version.js";

export function buildStatus(app: App) {
  const ls = app.reactor.listener().state();
  const workloads: Record<string, unknown> = {};
  for (const workload of app.reactor.workloads) {
    const d = app.reactor.drainers.get(workload.name)?.state();
    workloads[workload.name] = {
      enabled: workload.enabled(),
      disabledReason: workload.disabledReason(),
      backlog: d?.lastStats?.backlog ?? null,
      oldestPendingAgeSeconds: d?.lastStats?.oldestDueAgeSeconds ?? null,
      nextDueAt: d?.lastStats?.nextDueAt ?? null,
      inFlight: d?.inFlightRows ?? 0,
      draining: d?.running ?? false,
      lastWakeAt: d?.lastWakeAt ?? null,
      lastWakeReason: d?.lastWakeReason ?? null,
      lastError: d?.lastError ?? null,
      pausedUntil: workload.pausedUntil() ? new Date(workload.pausedUntil()) : null,
    };
  }
  return {
    instanceId: app.env.instanceId,
    owner: app.owner,
    version: VERSION,
    uptimeSeconds: Math.round((Date.now() - app.startedAt.getTime()) / 1000),
    settings: { ...app.settings.current },
    settingsReloadedAt: app.settings.lastReloadAt(),
    environment: {
      httpHost: app.env.httpHost,
      httpPort: app.env.httpPort,
      shipstationBaseUrl: redactUrl(app.env.shipstation.baseUrl),
      shipstationCredentials: Boolean(app.env.shipstation.apiKey && app.env.shipstation.apiSecret),
      adminRoutes: Boolean(app.env.adminToken),
      webhookAllowPrivateNetworks: app.env.webhookAllowPrivateNetworks,
      separateListenUrl: Boolean(app.env.listenDatabaseUrl),
    },
    listener: { ...ls },
    lastPollAt: app.reactor.poll.lastPollAt(),
    workloads,
  };
}
