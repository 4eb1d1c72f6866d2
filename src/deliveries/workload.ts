// The deliveries workload: one claimed delivery → one signed POST → delivered, retried
// on the schedule, failed when the schedule is exhausted, or cancelled when the
// endpoint is gone. Concurrency is bounded overall and per endpoint.
import type { Agent } from "undici";
import type { Pool } from "../db/pool.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { statusClass } from "../outbound/http.js";
import { scheduledDelayMs } from "../reactor/backoff.js";
import { type LeaseQueue, type Outcome, retryOrFail } from "../reactor/lease-queue.js";
import type { Settings } from "../reactor/settings-spec.js";
import type { Workload } from "../reactor/workload.js";
import { applyRetention, disableGoneSubscription, RETENTION_BATCH } from "./maintenance.js";
import { type ClaimedDelivery, DELIVERIES_CHANNEL } from "./queue.js";
import { deliveryBody, signedHeaders } from "./signing.js";
import { sendWebhook } from "./webhook-client.js";

/** Retry-After is honoured within this range; outside it is clamped. */
export const RETRY_AFTER_MIN_MS = 1_000;
export const RETRY_AFTER_MAX_MS = 60 * 60 * 1000;
/** A row claimed past its endpoint's cap (claims race) comes back this soon. */
const ENDPOINT_BUSY_DEFER_MS = 250;
/** Largest webhook body sent; an event above it fails with a clear error. */
export const MAX_WEBHOOK_BODY_BYTES = 256 * 1024;
/** Retention runs at most this often unless the last run hit a full batch. */
const RETENTION_EVERY_MS = 10 * 60 * 1000;

export interface DeliveriesOptions {
  pool: Pool;
  queue: LeaseQueue<ClaimedDelivery>;
  settings: Readonly<Settings>;
  agent: Agent;
  allowPrivateNetworks: boolean;
  logger: Logger;
  metrics: Metrics;
}

/**
 * In-flight requests one subscription may hold: three quarters of the slots, so a slow
 * endpoint always leaves at least a quarter (and at least one) for the others.
 */
export function perEndpointCap(concurrency: number): number {
  return Math.max(1, concurrency - Math.max(1, Math.floor(concurrency / 4)));
}

function clampRetryAfter(ms: number): number {
  return Math.min(RETRY_AFTER_MAX_MS, Math.max(RETRY_AFTER_MIN_MS, ms));
}

export function makeDeliveriesWorkload(options: DeliveriesOptions): Workload<ClaimedDelivery> {
  const { settings, metrics } = options;
  const log = options.logger.child({ workload: "deliveries" });
  const label = { workload: "deliveries" };
  // In-flight requests per subscription; at the cap, its rows are not claimed.
  const inFlightByEndpoint = new Map<number, number>();
  let lastRetention = 0;

  async function deliver(row: ClaimedDelivery): Promise<Outcome> {
    if (!row.subscription_enabled) {
      return {
        id: row.id,
        kind: "cancel",
        error: `cancelled: subscription ${row.subscription_id} is disabled${row.disabled_reason ? ` (${row.disabled_reason})` : ""}`,
      };
    }
    const event = {
      eventId: row.event_id,
      eventType: row.event_type,
      createdAt: row.event_created_at,
      payload: row.event_payload,
    };
    const body = deliveryBody(event);
    const bytes = Buffer.byteLength(body);
    if (bytes > MAX_WEBHOOK_BODY_BYTES) {
      // Receivers commonly cap bodies well below this; retrying would only repeat it.
      return {
        id: row.id,
        kind: "failed",
        error: `event body is ${bytes} bytes; webhooks carry at most ${MAX_WEBHOOK_BODY_BYTES} (send a reference to the data instead)`,
      };
    }
    const headers = signedHeaders(event, body, {
      secret: row.secret,
      previousSecret: row.previous_secret,
    });
    const result = await sendWebhook({
      url: row.url,
      body,
      headers,
      timeoutMs: settings.delivery_timeout_seconds * 1000,
      agent: options.agent,
      allowPrivate: options.allowPrivateNetworks,
    });
    metrics.httpResponses.inc({
      ...label,
      class: statusClass("status" in result ? result.status : null),
    });
    switch (result.kind) {
      case "delivered":
        return { id: row.id, kind: "success", extra: { last_status: result.status } };
      case "gone": {
        const reason = `endpoint answered 410 Gone at ${new Date().toISOString()}`;
        const cancelled = await disableGoneSubscription(options.pool, row.subscription_id, reason);
        log.warn(
          { subscriptionId: row.subscription_id, cancelled },
          "subscription disabled: endpoint answered 410 Gone",
        );
        return {
          id: row.id,
          kind: "cancel",
          error: `cancelled: ${reason}`,
          extra: { last_status: 410 },
        };
      }
      case "throttled": {
        // Backpressure, not failure: hand the row back without using an attempt.
        metrics.rateLimitPauses.inc(label);
        const fallback =
          scheduledDelayMs(settings.delivery_retry_schedule_seconds, Math.max(1, row.attempts)) ??
          60_000;
        const delay = clampRetryAfter(result.retryAfterMs ?? fallback);
        return { id: row.id, kind: "defer", at: new Date(Date.now() + delay) };
      }
      case "refused":
        return { id: row.id, kind: "failed", error: result.error, extra: { last_status: null } };
      case "failed":
        return retryOrFail(row, settings.delivery_retry_schedule_seconds, result.error, {
          delayMs: result.retryAfterMs === null ? null : clampRetryAfter(result.retryAfterMs),
          extra: { last_status: result.status },
        });
    }
  }

  return {
    name: "deliveries",
    channel: DELIVERIES_CHANNEL,
    queue: options.queue,
    enabled: () => settings.deliveries_enabled,
    disabledReason: () =>
      settings.deliveries_enabled ? null : "reactor.deliveries_enabled is false",
    unitSize: () => 1,
    concurrency: () => settings.delivery_concurrency,
    pausedUntil: () => 0,
    excludedKeys: () => {
      const cap = perEndpointCap(settings.delivery_concurrency);
      return [...inFlightByEndpoint].filter(([, n]) => n >= cap).map(([id]) => id);
    },
    async process(rows) {
      const cap = perEndpointCap(settings.delivery_concurrency);
      return Promise.all(
        rows.map(async (row): Promise<Outcome> => {
          const endpoint = Number(row.subscription_id);
          const busy = inFlightByEndpoint.get(endpoint) ?? 0;
          if (busy >= cap) {
            return { id: row.id, kind: "defer", at: new Date(Date.now() + ENDPOINT_BUSY_DEFER_MS) };
          }
          inFlightByEndpoint.set(endpoint, busy + 1);
          try {
            return await deliver(row);
          } finally {
            const left = (inFlightByEndpoint.get(endpoint) ?? 1) - 1;
            if (left <= 0) inFlightByEndpoint.delete(endpoint);
            else inFlightByEndpoint.set(endpoint, left);
          }
        }),
      );
    },
    async maintain() {
      if (Date.now() - lastRetention < RETENTION_EVERY_MS) return;
      const removed = await applyRetention(options.pool, settings.retention_days);
      const full = removed.deliveries === RETENTION_BATCH || removed.events === RETENTION_BATCH;
      // A full batch means more is waiting: let the next poll continue at once.
      lastRetention = full ? 0 : Date.now();
      if (removed.deliveries + removed.events > 0)
        log.info(removed, "retention removed old deliveries and events");
    },
  };
}
