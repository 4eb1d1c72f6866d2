// Reads every page of a ShipStation shipments listing (a SHIP_NOTIFY resource_url, or a
// watermark query) through the shared account, and applies each page as it arrives.
// Each page costs one call of the shared budget; the first answer that is not a page
// stops the walk and says why, with what was applied until then.
import type { Logger } from "../../logger.js";
import type { ShipStationAccount } from "../../outbound/shipstation-account.js";
import type { Shipment } from "../../outbound/shipstation-client.js";
import type { ApplyResult, ShipmentSource } from "./apply.js";

/** A walk reads at most this many pages (500 shipments each); the next run goes on. */
export const MAX_PAGES_PER_WALK = 20;
/**
 * A createDate further ahead of our clock than this is not ShipStation's clock (which may
 * be skewed by minutes, or read in the wrong zone by hours) but a bad value: it does not
 * move the watermark, which would otherwise skip every shipment until that date.
 */
export const MAX_CREATE_DATE_AHEAD_MS = 24 * 60 * 60 * 1000;

export type WalkResult =
  | { kind: "done"; shipments: number; applied: number; newest: Date | null; complete: boolean }
  /** Stopped before the end: paused (rate limit, budget, credentials) until `at`. */
  | { kind: "paused"; at: number; shipments: number; applied: number; newest: Date | null }
  /** Stopped before the end by an error; `final` when retrying cannot help (a 4xx). */
  | {
      kind: "error";
      error: string;
      final: boolean;
      shipments: number;
      applied: number;
      newest: Date | null;
    };

export interface Walker {
  walk(pageUrl: (page: number) => string, source: ShipmentSource): Promise<WalkResult>;
}

export function makeWalker(options: {
  account: ShipStationAccount;
  apply(shipments: readonly Shipment[], source: ShipmentSource): Promise<ApplyResult>;
  logger: Logger;
  applied: (source: ShipmentSource, n: number) => void;
}): Walker {
  const { account } = options;
  const log = options.logger.child({ workload: "shipments" });
  return {
    async walk(pageUrl, source) {
      let shipments = 0;
      let applied = 0;
      let newest: Date | null = null;
      const client = account.client;
      if (!client) {
        return {
          kind: "paused",
          at: Date.now() + 60_000,
          shipments,
          applied,
          newest,
        };
      }
      for (let page = 1; page <= MAX_PAGES_PER_WALK; page++) {
        const wait = await account.takeSlot("shipments");
        if (wait > 0) return { kind: "paused", at: Date.now() + wait, shipments, applied, newest };
        const res = await client.getShipments(pageUrl(page));
        const pausedUntil = await account.observe("shipments", res);
        if (res.kind !== "ok") {
          if (res.kind === "rate_limited" || res.kind === "auth" || res.kind === "endpoint") {
            return {
              kind: "paused",
              at: pausedUntil || Date.now() + 1_000,
              shipments,
              applied,
              newest,
            };
          }
          return {
            kind: "error",
            error: res.error,
            final: res.kind === "rejected",
            shipments,
            applied,
            newest,
          };
        }
        for (const line of res.invalid) {
          log.warn({ source }, `ShipStation sent a shipment that cannot be applied: ${line}`);
        }
        const result = await options.apply(res.shipments, source);
        shipments += res.shipments.length;
        applied += result.applied;
        options.applied(source, result.applied);
        for (const { shipment: s, error } of result.refused) {
          log.warn(
            { shipmentId: s.shipmentId, orderKey: s.orderKey, source, err: error },
            "PostgreSQL refused a shipment; skipped, the rest of the page is applied",
          );
        }
        for (const s of result.unmatched) {
          log.info(
            { shipmentId: s.shipmentId, orderKey: s.orderKey, orderNumber: s.orderNumber, source },
            "shipment of an order this database does not know; recorded and skipped",
          );
        }
        const latest = Date.now() + MAX_CREATE_DATE_AHEAD_MS;
        for (const s of res.shipments) {
          if (!s.createdAt) continue;
          if (s.createdAt.getTime() > latest) {
            log.warn(
              { shipmentId: s.shipmentId, createDate: s.createDate, source },
              "shipment createDate is more than a day ahead of this clock; it does not move the watermark",
            );
          } else if (!newest || s.createdAt > newest) newest = s.createdAt;
        }
        if (page >= res.pages) return { kind: "done", shipments, applied, newest, complete: true };
      }
      log.warn(
        { source, pages: MAX_PAGES_PER_WALK, shipments },
        source === "poll"
          ? "shipment listing has more pages than one walk reads; the next poll goes on from the new watermark"
          : "notification lists more pages than one walk reads; the watermark poll finds the rest",
      );
      return { kind: "done", shipments, applied, newest, complete: false };
    },
  };
}
