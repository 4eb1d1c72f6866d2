// /health and /health/ready: IETF health+json (draft-inadarei-api-health-check) built from
// a cheap database ping, the listener state and the last queue stats of each workload.
import type { App } from "../app.js";
import { withTimeout } from "../reactor/backoff.js";
import { VERSION } from "../version.js";

/** The listener may be down this long (a server restart, a cut) before readiness fails. */
export const LISTENER_GRACE_MS = 10_000;
/** Oldest due row older than this makes the service 'warn'. */
export const OLDEST_PENDING_WARN_SECONDS = 300;
const PING_TIMEOUT_MS = 2_000;

type Status = "pass" | "warn" | "fail";
interface Check {
  status: Status;
  componentType?: string;
  observedValue?: unknown;
  observedUnit?: string;
  time: string;
  output?: string;
}

async function pingMs(app: App): Promise<number> {
  const started = performance.now();
  await withTimeout(
    app.pool.query("SELECT 1"),
    PING_TIMEOUT_MS,
    `no answer within ${PING_TIMEOUT_MS} ms`,
  );
  return performance.now() - started;
}

export async function buildHealth(app: App) {
  const time = new Date().toISOString();
  const checks: Record<string, Check[]> = {};
  let pg: Check;
  try {
    pg = {
      status: "pass",
      componentType: "datastore",
      observedValue: Number((await pingMs(app)).toFixed(2)),
      observedUnit: "ms",
      time,
    };
  } catch (err) {
    pg = {
      status: "fail",
      componentType: "datastore",
      time,
      output: `database unreachable: ${(err as Error).message}`,
    };
  }
  checks["postgres:responseTime"] = [pg];

  const ls = app.reactor.listener().state();
  const downFor = ls.connected ? 0 : Date.now() - ls.since.getTime();
  checks["listener:connected"] = [
    {
      status: ls.connected ? "pass" : downFor > LISTENER_GRACE_MS ? "fail" : "warn",
      componentType: "component",
      observedValue: ls.connected,
      time: ls.since.toISOString(),
      ...(ls.connected ? {} : { output: `disconnected for ${Math.round(downFor / 1000)} s` }),
    },
  ];

  for (const workload of app.reactor.workloads) {
    const stats = app.reactor.drainers.get(workload.name)?.state().lastStats;
    const reason = workload.disabledReason();
    const age = stats?.oldestDueAgeSeconds ?? 0;
    const status: Status = reason || age > OLDEST_PENDING_WARN_SECONDS ? "warn" : "pass";
    checks[`${workload.name}:backlog`] = [
      {
        status,
        componentType: "component",
        observedValue: stats?.backlog ?? null,
        time,
        ...(reason ? { output: reason } : {}),
      },
    ];
    checks[`${workload.name}:oldestPendingAge`] = [
      {
        status: age > OLDEST_PENDING_WARN_SECONDS ? "warn" : "pass",
        componentType: "component",
        observedValue: age,
        observedUnit: "s",
        time,
      },
    ];
  }
  const hasCreds = Boolean(app.env.shipstation.apiKey && app.env.shipstation.apiSecret);
  checks["uploads:credentials"] = [
    {
      status: hasCreds ? "pass" : "warn",
      componentType: "component",
      observedValue: hasCreds,
      time,
      ...(hasCreds ? {} : { output: "SHIPSTATION_API_KEY/SECRET not set: uploads paused" }),
    },
  ];

  const all = Object.values(checks).flat();
  const status: Status = all.some((c) => c.status === "fail")
    ? "fail"
    : all.some((c) => c.status === "warn")
      ? "warn"
      : "pass";
  return {
    status,
    version: VERSION,
    serviceId: app.env.instanceId,
    description: "pg-reactor",
    checks,
  };
}
