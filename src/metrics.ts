// Prometheus metrics (DESIGN.md §4). Names are a contract with dashboards and alert
// rules: base units, `_total` counters, labels bounded to workload/channel/outcome/reason.
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

/** Buckets from 100 µs to 60 s: pickup latency is sub-millisecond on the notify path. */
const LATENCY_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
  30, 60,
];

export function makeMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
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
    listenerReconnects: new Counter({
      name: "reactor_listener_reconnects_total",
      help: "Times the LISTEN connection was re-established.",
      registers,
    }),
    wakeups: new Counter({
      name: "reactor_wakeups_total",
      help: "Drain wake-ups, by workload and reason (notify, poll, reconnect, timer, config, start).",
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
