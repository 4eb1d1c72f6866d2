// The shipments workload: one claimed SHIP_NOTIFY → GET its resource_url (every page)
// through the shared ShipStation account → each shipment applied to its order. Paused
// with the account (429, credentials, budget), retried on the schedule when ShipStation
// fails, failed when the notification can never be read (a foreign URL, a 4xx).
import type { ShipStationAccount } from "../../outbound/shipstation-account.js";
import { type LeaseQueue, type Outcome, retryOrFail } from "../../reactor/lease-queue.js";
import type { Workload } from "../../reactor/workload.js";
import type { Walker } from "./fetch.js";
import { type ClaimedNotification, SHIPMENTS_CHANNEL } from "./queue.js";
import { listingPage, shipmentsResourceUrl } from "./resource-url.js";
import type { ShipmentsSettings } from "./settings.js";

/**
 * Waits after failed attempt 1, 2, …: 5 s, 15 s, 1 min, 5 min, 15 min, 30 min, 1 h
 * (±20 % jitter); then the notification fails (the watermark poll still finds its
 * shipments).
 */
export const NOTIFICATION_RETRY_SCHEDULE_SECONDS = [5, 15, 60, 300, 900, 1800, 3600];

export function makeShipmentsWorkload(options: {
  queue: LeaseQueue<ClaimedNotification>;
  settings: Readonly<ShipmentsSettings>;
  account: ShipStationAccount;
  walker: Walker;
  baseUrl: string;
}): Workload<ClaimedNotification> {
  const { settings, account, walker } = options;

  function disabledReason(): string | null {
    const unavailable = account.unavailable();
    if (unavailable) return unavailable;
    if (!settings.shipments_enabled) return "reactor.shipments_enabled is false";
    return null;
  }

  async function processOne(row: ClaimedNotification): Promise<Outcome> {
    // The hook refuses foreign URLs before storing them; this guards rows written by
    // anything else, so a resource_url is never fetched outside ShipStation. What is
    // fetched is always on SHIPSTATION_BASE_URL's origin.
    const checked = shipmentsResourceUrl(options.baseUrl, row.resource_url);
    if (!checked.ok) {
      return { id: row.id, kind: "failed", error: `${checked.error}; not fetched` };
    }
    const result = await walker.walk((page) => listingPage(checked.fetchUrl, page), "webhook");
    const extra = { shipments: result.shipments, applied: result.applied };
    switch (result.kind) {
      case "done":
        return { id: row.id, kind: "success", extra };
      case "paused":
        // Pages applied so far stay applied; the rest come on the next try (re-applying
        // the first pages changes nothing).
        return { id: row.id, kind: "defer", at: new Date(result.at) };
      case "error":
        return result.final
          ? { id: row.id, kind: "failed", error: result.error, extra }
          : retryOrFail(row, NOTIFICATION_RETRY_SCHEDULE_SECONDS, result.error, { extra });
    }
  }

  return {
    name: "shipments",
    channel: SHIPMENTS_CHANNEL,
    queue: options.queue,
    enabled: () => disabledReason() === null,
    disabledReason,
    // One notification per call: each is its own walk of pages.
    unitSize: () => 1,
    concurrency: () => 2,
    retryScheduleSeconds: () => NOTIFICATION_RETRY_SCHEDULE_SECONDS,
    pausedUntil: account.pausedUntil,
    pauseReason: account.pauseReason,
    checks: account.checks,
    async process(rows) {
      return Promise.all(rows.map(processOne));
    },
  };
}
