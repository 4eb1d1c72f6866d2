// Prometheus metrics (fixed names: docs/architecture.md). Names are a contract with
// dashboards and alert rules (ops/alerts.yml): base units, `_total` counters, labels bounded
// to workload/channel/outcome/reason/class.
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { WakeReason } from "./reactor/workload.js";

/** Buckets from 100 µs to 60 s: pickup latency is sub-millisecond on the notify path. */
const LATENCY_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
  30, 60,
];

/** The `outcome` values of reactor_completed_total (a deferred row is not counted). */
export const COMPLETED_OUTCOMES = ["success", "retry", "failed", "cancelled"] as const;

/** Every wake reason, as a record so that a new WakeReason fails to compile until listed. */
const WAKE_REASON_SET: Record<WakeReason, true> = {
  notify: true,
  poll: true,
  reconnect: true,
  timer: true,
  config: true,
  start: true,
  retry: true,
  wal: true,
};
export const WAKE_REASONS = Object.keys(WAKE_REASON_SET) as WakeReason[];

/** The `class` values of reactor_http_responses_total (statusClass in outbound/http.ts). */
export const HTTP_CLASSES = ["2xx", "3xx", "4xx", "5xx", "error"] as const;

/**
 * The default process metrics, minus what Prometheus' own linter refuses. prom-client adds
 * gauges named like counters (nodejs_active_handles_total, nodejs_active_requests_total,
 * nodejs_active_resources_total); `promtool check metrics` rejects a `_total` suffix on
 * anything but a counter. Each is the sum of its per-type gauge without the suffix
 * (sum(nodejs_active_handles)), so nothing is lost by dropping them.
 */
function registerDefaultMetrics(registry: Registry) {
  collectDefaultMetrics({ register: registry });
  for (const metric of registry.getMetricsAsArray()) {
    const { name } = metric as unknown as { name: string };
    if (name.endsWith("_total") && !(metric instanceof Counter)) {
      registry.removeSingleMetric(name);
    }
  }
}

export function makeMetrics() {
  const registry = new Registry();
  registerDefaultMetrics(registry);
  const registers = [registry];
  return {
    registry,
    notifications: new Counter({
      name: "reactor_notifications_total",
      help: "NOTIFY messages received, by channel.",
      labelNames: ["channel"] as const,
      registers,
    }),
    notificationsRejected: new Counter({
      name: "reactor_notifications_rejected_total",
      help: "NOTIFY payloads that were not the expected tiny JSON (the wake-up still happens).",
      labelNames: ["channel"] as const,
      registers,
    }),
    listenerConnected: new Gauge({
      name: "reactor_listener_connected",
      help: "1 while the LISTEN connection is up and verified.",
      registers,
    }),
    walConnected: new Gauge({
      name: "reactor_wal_connected",
      help: "1 while the write-ahead log stream (wake source wal) is running; 0 otherwise.",
      registers,
    }),
    wakeSource: new Gauge({
      name: "reactor_wake_source",
      help: "1 for the wake source in force (notify or wal), 0 for the other.",
      labelNames: ["source"] as const,
      registers,
    }),
    listenerReconnects: new Counter({
      name: "reactor_listener_reconnects_total",
      help: "Times the LISTEN connection was re-established.",
      registers,
    }),
    wakeups: new Counter({
      name: "reactor_wakeups_total",
      help: "Drain wake-ups, by workload and reason (notify, wal, poll, reconnect, timer, config, start, retry).",
      labelNames: ["workload", "reason"] as const,
      registers,
    }),
    claimed: new Counter({
      name: "reactor_claimed_total",
      help: "Rows claimed under a lease.",
      labelNames: ["workload"] as const,
      registers,
    }),
    completed: new Counter({
      name: "reactor_completed_total",
      help: "Rows finalized, by outcome: success, retry, failed, cancelled (deferred rows are not counted).",
      labelNames: ["workload", "outcome"] as const,
      registers,
    }),
    deferred: new Counter({
      name: "reactor_deferred_total",
      help: "Rows handed back without using an attempt (rate limit, paused, per-endpoint cap).",
      labelNames: ["workload"] as const,
      registers,
    }),
    pickupLatency: new Histogram({
      name: "reactor_pickup_latency_seconds",
      help: "Time from a row becoming due to being claimed.",
      labelNames: ["workload"] as const,
      buckets: LATENCY_BUCKETS,
      registers,
    }),
    processing: new Histogram({
      name: "reactor_processing_seconds",
      help: "Time a handler spent on one unit of work (a createorders call, one webhook).",
      labelNames: ["workload"] as const,
      buckets: LATENCY_BUCKETS,
      registers,
    }),
    backlog: new Gauge({
      name: "reactor_backlog",
      help: "Pending rows (due or scheduled), refreshed after each drain and poll.",
      labelNames: ["workload"] as const,
      registers,
    }),
    oldestPendingAge: new Gauge({
      name: "reactor_oldest_pending_age_seconds",
      help: "Age of the oldest due pending row, refreshed after each drain and poll.",
      labelNames: ["workload"] as const,
      registers,
    }),
    inFlight: new Gauge({
      name: "reactor_in_flight",
      help: "Rows claimed by this process and not yet finalized.",
      labelNames: ["workload"] as const,
      registers,
    }),
    httpResponses: new Counter({
      name: "reactor_http_responses_total",
      help: "Outbound HTTP results by status class (2xx..5xx, or error for no response).",
      labelNames: ["workload", "class"] as const,
      registers,
    }),
    rateLimitPauses: new Counter({
      name: "reactor_rate_limit_pauses_total",
      help: "Times a workload paused for a rate limit (local limit or a 429).",
      labelNames: ["workload"] as const,
      registers,
    }),
    drainErrors: new Counter({
      name: "reactor_drain_errors_total",
      help: "Database errors in a drain loop (the loop backs off and retries).",
      labelNames: ["workload"] as const,
      registers,
    }),
    configReloads: new Counter({
      name: "reactor_config_reloads_total",
      help: "Settings reloads from configuration_params.",
      registers,
    }),
    configRejected: new Counter({
      name: "reactor_config_rejected_total",
      help: "Stored setting values refused by the reactor's own validation.",
      registers,
    }),
    safetyPolls: new Counter({
      name: "reactor_safety_polls_total",
      help: "Safety-net polls run.",
      registers,
    }),
  };
}

export type Metrics = ReturnType<typeof makeMetrics>;

/**
 * Creates every labelled series at 0 for each label value, so that increase() and rate()
 * see the first event: a series that first appears at 3 has, to Prometheus, not
 * increased at all, and an alert on the first burst of failures would never fire.
 * Idempotent (adds 0); call once the workloads and channels are known.
 */
export function primeMetrics(
  metrics: Metrics,
  labels: { workloads: readonly string[]; channels: readonly string[] },
) {
  for (const channel of labels.channels) {
    metrics.notifications.inc({ channel }, 0);
    metrics.notificationsRejected.inc({ channel }, 0);
  }
  for (const workload of labels.workloads) {
    for (const reason of WAKE_REASONS) metrics.wakeups.inc({ workload, reason }, 0);
    for (const outcome of COMPLETED_OUTCOMES) metrics.completed.inc({ workload, outcome }, 0);
    for (const cls of HTTP_CLASSES) metrics.httpResponses.inc({ workload, class: cls }, 0);
    for (const counter of [
      metrics.claimed,
      metrics.deferred,
      metrics.rateLimitPauses,
      metrics.drainErrors,
    ]) {
      counter.inc({ workload }, 0);
    }
    metrics.pickupLatency.zero({ workload });
    metrics.processing.zero({ workload });
    // Nothing is in flight before the first claim. Backlog and oldest age are left to the
    // first stats read: a 0 there would claim an empty queue nobody has looked at yet.
    metrics.inFlight.inc({ workload }, 0);
  }
}
