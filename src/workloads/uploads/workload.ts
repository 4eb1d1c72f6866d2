// The uploads workload: claimed orders → validated one by one → one createorders call per
// unit → each result mapped back to its row. The rate limit is one budget shared by every
// replica; a 4xx for a whole call is split until the order ShipStation refuses is alone;
// rejected credentials pause uploads (the ShipStation account tries them again).
import type { Logger } from "../../logger.js";
import type { ShipStationAccount } from "../../outbound/shipstation-account.js";
import { type LeaseQueue, type Outcome, retryOrFail } from "../../reactor/lease-queue.js";
import type { Workload } from "../../reactor/workload.js";
import { buildOrder } from "./order.js";
import { type ClaimedOrder, ORDERS_CHANNEL } from "./queue.js";
import type { UploadsSettings } from "./settings.js";

/**
 * Waits after failed attempt 1, 2, …: 5 s, 15 s, 1 min, 5 min, 15 min, 30 min, 1 h, 2 h
 * (±20 % jitter); a ninth failure is final. About 4 hours in all.
 */
export const UPLOAD_RETRY_SCHEDULE_SECONDS = [5, 15, 60, 300, 900, 1800, 3600, 7200];

export interface UploadsOptions {
  queue: LeaseQueue<ClaimedOrder>;
  settings: Readonly<UploadsSettings>;
  /** The ShipStation account: its client, shared budget, pauses and credentials state. */
  account: ShipStationAccount;
  logger: Logger;
}

export function makeUploadsWorkload(options: UploadsOptions): Workload<ClaimedOrder> {
  const { settings, account } = options;
  const log = options.logger.child({ workload: "uploads" });

  function disabledReason(): string | null {
    const unavailable = account.unavailable();
    if (unavailable) return unavailable;
    if (!settings.uploads_enabled) return "reactor.uploads_enabled is false";
    return null;
  }

  /**
   * One createorders call for these rows, or, when ShipStation refuses the whole call
   * with a 4xx, two calls for its halves, recursively, so that only the order at fault
   * fails and carries ShipStation's message.
   */
  async function send(rows: ClaimedOrder[], jsons: string[]): Promise<Outcome[]> {
    const client = account.client;
    if (!client) throw new Error("uploads ran without ShipStation credentials");
    const wait = await account.takeSlot("uploads");
    if (wait > 0) {
      const at = new Date(Date.now() + wait);
      return rows.map((r) => ({ id: r.id, kind: "defer", at }));
    }
    const res = await client.createOrders(jsons);
    const pausedUntil = await account.observe("uploads", res);
    switch (res.kind) {
      case "ok": {
        // Results are matched by orderKey; by position only when none carries a key. A
        // malformed entry (null, a string) counts as no result for its order.
        const results = res.results.map((r) => (r && typeof r === "object" ? r : undefined));
        const keyed = results.some((r) => r?.orderKey !== undefined);
        const byKey = new Map(results.filter((r) => r).map((r) => [r?.orderKey, r]));
        return rows.map((row, i) => {
          const result = keyed ? byKey.get(row.upload_key) : results[i];
          if (!result)
            return retryOrFail(
              row,
              UPLOAD_RETRY_SCHEDULE_SECONDS,
              "ShipStation's response had no result for this order",
            );
          if (result.success === true) {
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
      case "rate_limited":
      case "endpoint":
      case "auth": {
        // No attempt is used: the rows were never considered, and every order would
        // fail the same way. The account pauses until the reset or the next credentials try.
        const at = new Date(pausedUntil || Date.now() + 1000);
        return rows.map((r) => ({ id: r.id, kind: "defer", at }));
      }
      case "rejected": {
        if (rows.length === 1) {
          const [row] = rows as [ClaimedOrder];
          return [{ id: row.id, kind: "failed", error: res.error }];
        }
        const half = Math.ceil(rows.length / 2);
        log.info(
          { rows: rows.length, status: res.status },
          "ShipStation refused a whole batch; splitting it to find the order at fault",
        );
        return [
          ...(await send(rows.slice(0, half), jsons.slice(0, half))),
          ...(await send(rows.slice(half), jsons.slice(half))),
        ];
      }
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
    retryScheduleSeconds: () => UPLOAD_RETRY_SCHEDULE_SECONDS,
    pausedUntil: account.pausedUntil,
    pauseReason: account.pauseReason,
    checks: account.checks,
    async process(rows) {
      const outcomes: Outcome[] = [];
      const sendable: ClaimedOrder[] = [];
      const jsons: string[] = [];
      for (const row of rows) {
        const built = buildOrder(row);
        if (built.ok) {
          sendable.push(row);
          jsons.push(built.json);
        } else {
          outcomes.push({ id: row.id, kind: "failed", error: built.error });
        }
      }
      if (sendable.length > 0) outcomes.push(...(await send(sendable, jsons)));
      return outcomes;
    },
  };
}
