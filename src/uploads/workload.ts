// The uploads workload: claimed orders → validated → one createorders call per unit →
// each result mapped back to its row. Rate limits are obeyed before and after the call.
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import { statusClass } from "../outbound/http.js";
import { sleep } from "../reactor/backoff.js";
import { type LeaseQueue, type Outcome, retryOrFail } from "../reactor/lease-queue.js";
import type { RateLimiter } from "../reactor/rate-limit.js";
import type { Settings } from "../reactor/settings-spec.js";
import type { Workload } from "../reactor/workload.js";
import { buildOrder, orderKeyOf, type ShipStationOrder } from "./order.js";
import { type ClaimedOrder, ORDERS_CHANNEL } from "./queue.js";
import type { ShipStationClient } from "./shipstation-client.js";

/**
 * Waits after failed attempt 1, 2, …: 5 s, 15 s, 1 min, 5 min, 15 min, 30 min, 1 h, 2 h
 * (±20 % jitter); a ninth failure is final. About 4 hours in all.
 */
export const UPLOAD_RETRY_SCHEDULE_SECONDS = [5, 15, 60, 300, 900, 1800, 3600, 7200];
/** Wait for a rate-limit slot in place up to this long; longer, give the rows back. */
const MAX_INLINE_WAIT_MS = 5_000;

export interface UploadsOptions {
  queue: LeaseQueue<ClaimedOrder>;
  settings: Readonly<Settings>;
  /** null when SHIPSTATION_API_KEY/SECRET are not set: uploads stay paused. */
  client: ShipStationClient | null;
  limiter: RateLimiter;
  logger: Logger;
  metrics: Metrics;
}

export function makeUploadsWorkload(options: UploadsOptions): Workload<ClaimedOrder> {
  const { settings, client, limiter, metrics } = options;
  const log = options.logger.child({ workload: "uploads" });
  const label = { workload: "uploads" };
  let credentialsRejected: string | null = null;

  function disabledReason(): string | null {
    if (!client)
      return "SHIPSTATION_API_KEY and SHIPSTATION_API_SECRET are not set: uploads are paused";
    if (credentialsRejected) return credentialsRejected;
    if (!settings.uploads_enabled) return "reactor.uploads_enabled is false";
    return null;
  }

  /** Waits for a local rate-limit slot; false means the wait is long and rows go back. */
  async function takeSlot(): Promise<number> {
    for (;;) {
      limiter.setLimit(settings.upload_rate_limit_per_minute);
      const wait = limiter.tryTake();
      if (wait === 0) return 0;
      if (wait > MAX_INLINE_WAIT_MS) return wait;
      await sleep(wait);
    }
  }

  async function send(rows: ClaimedOrder[], orders: ShipStationOrder[]): Promise<Outcome[]> {
    if (!client) throw new Error("uploads ran without ShipStation credentials");
    const wait = await takeSlot();
    if (wait > 0) {
      metrics.rateLimitPauses.inc(label);
      const at = new Date(Date.now() + wait);
      return rows.map((r) => ({ id: r.id, kind: "defer", at }));
    }
    const res = await client.createOrders(orders);
    metrics.httpResponses.inc({
      ...label,
      class: statusClass(res.status),
    });
    switch (res.kind) {
      case "ok": {
        if (res.rate.remaining === 0 && res.rate.resetMs !== null) {
          limiter.pauseUntil(Date.now() + res.rate.resetMs);
          metrics.rateLimitPauses.inc(label);
        }
        const byKey = new Map(res.results.map((r) => [r.orderKey, r]));
        return rows.map((row, i) => {
          const key = orderKeyOf(row);
          const result =
            byKey.get(key) ?? (res.results[i]?.orderKey === undefined ? res.results[i] : undefined);
          if (!result)
            return retryOrFail(
              row,
              UPLOAD_RETRY_SCHEDULE_SECONDS,
              "ShipStation's response had no result for this order",
            );
          if (result.success) {
            return {
              id: row.id,
              kind: "success",
              extra: { shipstation_order_id: result.orderId ?? null },
            };
          }
          return {
            id: row.id,
            kind: "failed",
            error: `ShipStation refused the order: ${result.errorMessage ?? "no reason given"}`,
          };
        });
      }
      case "rate_limited": {
        // No attempt is used: the rows were never considered.
        const until = Date.now() + res.resetMs;
        limiter.pauseUntil(until);
        metrics.rateLimitPauses.inc(label);
        log.warn({ resetMs: res.resetMs }, "ShipStation rate limit hit (429); pausing uploads");
        return rows.map((r) => ({ id: r.id, kind: "defer", at: new Date(until) }));
      }
      case "auth": {
        // Every order would fail the same way: stop uploading until the credentials are
        // fixed (restart), keeping all orders pending rather than failing them.
        credentialsRejected = res.error;
        log.error(res.error);
        return rows.map((r) => ({ id: r.id, kind: "defer", at: new Date() }));
      }
      case "rejected":
        return rows.map((r) => ({ id: r.id, kind: "failed", error: res.error }));
      case "transient":
        return rows.map((r) => retryOrFail(r, UPLOAD_RETRY_SCHEDULE_SECONDS, res.error));
    }
  }

  return {
    name: "uploads",
    channel: ORDERS_CHANNEL,
    queue: options.queue,
    // One list of reasons; enabled() is just "no reason to be paused".
    enabled: () => disabledReason() === null,
    disabledReason,
    unitSize: () => settings.upload_batch_size,
    concurrency: () => settings.upload_concurrency,
    pausedUntil: () => limiter.pausedUntil(),
    async process(rows) {
      const outcomes: Outcome[] = [];
      const sendable: ClaimedOrder[] = [];
      const orders: ShipStationOrder[] = [];
      for (const row of rows) {
        const built = buildOrder(row);
        if (built.ok) {
          sendable.push(row);
          orders.push(built.order);
        } else {
          outcomes.push({ id: row.id, kind: "failed", error: built.error });
        }
      }
      if (sendable.length > 0) outcomes.push(...(await send(sendable, orders)));
      return outcomes;
    },
  };
}
