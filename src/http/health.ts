// /health and /health/ready: IETF health+json (draft-inadarei-api-health-check) built from
// a cheap database ping, the listener state, each workload's drain loop and last queue
// stats, and the checks a workload adds itself (credentials, pauses). A workload that
// cannot make progress is never `pass`.
import type { App } from "../app.js";
import { withTimeout } from "../reactor/backoff.js";
import { VERSION } from "../version.js";

/** The listener may be down this long (a server restart, a cut) before readiness fails. */
export const LISTENER_GRACE_MS = 10_000;
/** Oldest pending row older than this makes the service 'warn'. */
export const OLDEST_PENDING_WARN_SECONDS = 300;
/** Claimable rows and no claim or finalize for this long: the workload is stalled. */
export const STALL_SECONDS = 60;
/** Finished rows waiting this long for another transaction's row lock make it 'warn'. */
export const LOCK_WAIT_WARN_SECONDS = 30;
/** Under Kubernetes' default 1 s probe timeout, with room for the rest of the answer. */
const PING_TIMEOUT_MS = 800;

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

const worst = (statuses: Status[]): Status =>
  statuses.includes("fail") ? "fail" : statuses.includes("warn") ? "warn" : "pass";

function workloadChecks(app: App, time: string): Record<string, Check[]> {
  const checks: Record<string, Check[]> = {};
  const now = Date.now();
  for (const workload of app.reactor.workloads) {
    const d = app.reactor.drainers.get(workload.name)?.state();
    const stats = d?.lastStats;
    const disabled = workload.disabledReason();
    const paused = workload.pausedUntil() > now ? (workload.pauseReason?.() ?? "paused") : null;
    const age = stats?.oldestPendingAgeSeconds ?? 0;
    const check = (status: Status, extra: Partial<Check>): Check[] => [
      { status, componentType: "component", time, ...extra },
    ];
    checks[`${workload.name}:backlog`] = check(disabled || paused ? "warn" : "pass", {
      observedValue: stats?.backlog ?? null,
      ...(disabled || paused ? { output: disabled ?? paused ?? "" } : {}),
    });
    checks[`${workload.name}:oldestPendingAge`] = check(
      age > OLDEST_PENDING_WARN_SECONDS ? "warn" : "pass",
      { observedValue: age, observedUnit: "s" },
    );
    // Progress: the drain loop works, and claimable rows do not sit unclaimed.
    let progress: Check[];
    if (d?.failingSince) {
      const secs = Math.round((now - d.failingSince.getTime()) / 1000);
      progress = check("fail", {
        observedValue: false,
        output: `drains have failed for ${secs} s: ${d.lastError}`,
      });
    } else {
      const idleFor = (now - (d?.lastProgressAt ?? app.startedAt).getTime()) / 1000;
      const stuck = !disabled && !paused && (stats?.claimable ?? 0) > 0 && idleFor > STALL_SECONDS;
      // Claims that keep running and find nothing mean the due rows are locked by another
      // transaction (an app's): worth a warning, not a failed probe. No claim at all for
      // that long (the safety poll wakes a claim at least every poll interval) means this
      // reactor's loop is not working.
      const claimSecs = (now - (d?.lastClaimAt ?? app.startedAt).getTime()) / 1000;
      const claimGap = Math.max(STALL_SECONDS, 2 * app.settings.current.poll_interval_seconds);
      const stalled = stuck && claimSecs > claimGap;
      const blocked = stuck && !stalled;
      const waiting = d?.waitingOnLocks;
      const lockSecs = waiting?.since ? (now - waiting.since.getTime()) / 1000 : 0;
      progress = stalled
        ? check("fail", {
            observedValue: false,
            output: `${stats?.claimable} rows are due and unclaimed, and nothing was claimed or recorded for ${Math.round(idleFor)} s`,
          })
        : blocked
          ? check("warn", {
              observedValue: true,
              output: `${stats?.claimable} due rows could not be claimed for ${Math.round(idleFor)} s: another transaction holds them locked?`,
            })
          : lockSecs > LOCK_WAIT_WARN_SECONDS
            ? check("warn", {
                observedValue: true,
                output: `${waiting?.rows} finished rows have waited ${Math.round(lockSecs)} s for another transaction's row lock to record their results`,
              })
            : check("pass", { observedValue: true });
    }
    checks[`${workload.name}:progress`] = progress;
    for (const extra of workload.checks?.() ?? []) {
      checks[`${workload.name}:${extra.name}`] = check(extra.status, {
        observedValue: extra.observedValue,
        ...(extra.output ? { output: extra.output } : {}),
      });
    }
  }
  return checks;
}

/** What each source says about itself (the import folder reachable and writable). */
function sourceChecks(app: App, time: string): Record<string, Check[]> {
  const checks: Record<string, Check[]> = {};
  for (const { module, instance } of app.sources) {
    for (const extra of instance.checks?.() ?? []) {
      checks[`${module.name}:${extra.name}`] = [
        {
          status: extra.status,
          componentType: "component",
          observedValue: extra.observedValue,
          time,
          ...(extra.output ? { output: extra.output } : {}),
        },
      ];
    }
  }
  return checks;
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
  if (app.reactor.wakeSource() === "wal") {
    // Warn, not fail: retry timers and the safety poll keep work flowing meanwhile.
    const wal = app.reactor.wal.state();
    const ok = wal.connected && wal.problem === null;
    checks["wal:stream"] = [
      {
        status: ok ? "pass" : "warn",
        componentType: "component",
        observedValue: wal.connected,
        time: wal.since.toISOString(),
        ...(ok ? {} : { output: wal.problem ?? "the replication stream is starting" }),
      },
    ];
  }
  Object.assign(checks, workloadChecks(app, time), sourceChecks(app, time));

  return {
    status: worst(
      Object.values(checks)
        .flat()
        .map((c) => c.status),
    ),
    version: VERSION,
    serviceId: app.env.instanceId,
    description: "pg-reactor",
    checks,
  };
}
