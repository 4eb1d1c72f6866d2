// The shipments workload (ShipStation → orders_inbox) as one module: SHIP_NOTIFY arrives
// on its hook and is worked from shipstation_notifications like any queue; a watermark
// poll is the safety net; the SHIP_NOTIFY subscription is made at start.
import { Counter } from "prom-client";
import type { WorkloadModule } from "../module.js";
import { applyShipments, type ShipmentSource } from "./apply.js";
import { makeWalker } from "./fetch.js";
import { registerShipStationHook } from "./hook.js";
import { makeShipmentPoll } from "./poll.js";
import { makeNotificationsQueue, SHIPMENTS_CHANNEL } from "./queue.js";
import { SHIPMENTS_SETTINGS } from "./settings.js";
import { makeSubscriber } from "./subscribe.js";
import { makeShipmentsWorkload } from "./workload.js";

const SOURCES: readonly ShipmentSource[] = ["webhook", "poll"];

export const shipmentsModule: WorkloadModule<typeof SHIPMENTS_SETTINGS> = {
  name: "shipments",
  channel: SHIPMENTS_CHANNEL,
  rows: "notifications",
  settings: SHIPMENTS_SETTINGS,
  queue: makeNotificationsQueue,
  failedRows: {
    columns: "t.id, t.resource_type, t.resource_url, t.attempts, t.last_error, t.received_at",
    filters: {},
    // created_after/created_before compare the time the hook received the notification.
    createdColumn: "received_at",
  },
  create(ctx) {
    const registers = [ctx.metrics.registry];
    const appliedTotal = new Counter({
      name: "reactor_shipments_applied_total",
      help: "Shipments that changed an order (shipped or voided) and wrote an outbox event, by source: webhook, poll.",
      labelNames: ["source"] as const,
      registers,
    });
    const unmatchedTotal = new Counter({
      name: "reactor_shipments_unmatched_total",
      help: "Shipments of orders this database does not know (counted once per shipment).",
      registers,
    });
    for (const source of SOURCES) appliedTotal.inc({ source }, 0);
    unmatchedTotal.inc(0);
    const { baseUrl, webhookToken } = ctx.env.shipstation;
    const walker = makeWalker({
      account: ctx.shipstation,
      async apply(shipments, source) {
        const result = await applyShipments(ctx.pool, shipments, source);
        unmatchedTotal.inc(result.unmatched.length);
        return result;
      },
      logger: ctx.logger,
      applied: (source, n) => appliedTotal.inc({ source }, n),
    });
    const poll = makeShipmentPoll({
      pool: ctx.pool,
      directUrl: ctx.directDatabaseUrl,
      settings: ctx.settings,
      account: ctx.shipstation,
      walker,
      logger: ctx.logger,
      startedAt: new Date(),
    });
    const subscriber = makeSubscriber({
      account: ctx.shipstation,
      publicUrl: ctx.env.publicUrl,
      token: webhookToken,
      directUrl: ctx.directDatabaseUrl,
      logger: ctx.logger,
    });
    const workload = makeShipmentsWorkload({
      queue: makeNotificationsQueue(ctx.pool),
      settings: ctx.settings,
      account: ctx.shipstation,
      walker,
      baseUrl,
    });
    return {
      workload: {
        ...workload,
        checks: () => [
          ...(workload.checks?.() ?? []),
          poll.check(),
          ...[subscriber.check()].filter((c) => c !== null),
        ],
      },
      routes(server) {
        if (webhookToken)
          registerShipStationHook(server, { pool: ctx.pool, token: webhookToken, baseUrl });
      },
      jobs: [
        {
          name: "shipment poll",
          intervalMs: () => ctx.settings.shipment_sync_interval_seconds * 1000,
          run: poll.run,
        },
      ],
      async afterStart() {
        await subscriber.ensure();
        // Catch up at once after downtime (another replica's recent poll makes it a no-op).
        await poll.run().catch(() => undefined);
      },
      async status() {
        const { watermark, polledAt } = await poll.read();
        const age = (at: Date | null) =>
          at ? Math.round((Date.now() - at.getTime()) / 1000) : null;
        return {
          hook: webhookToken ? "on" : "off (SHIPSTATION_WEBHOOK_TOKEN is not set)",
          subscription: subscriber.state(),
          watermark,
          watermarkAgeSeconds: age(watermark),
          lastShipmentPollAt: polledAt,
          lastShipmentPollAgeSeconds: age(polledAt),
        };
      },
    };
  },
};
