// The uploads workload (orders_inbox → ShipStation createorders) as one module: what the
// app, the status server, the admin API and the CLI need to know about it.
import type { WorkloadModule } from "../module.js";
import { makeOrdersQueue, ORDERS_CHANNEL } from "./queue.js";
import { UPLOADS_SETTINGS } from "./settings.js";
import { makeUploadsWorkload } from "./workload.js";

export const uploadsModule: WorkloadModule<typeof UPLOADS_SETTINGS> = {
  name: "uploads",
  channel: ORDERS_CHANNEL,
  rows: "orders",
  settings: UPLOADS_SETTINGS,
  queue: makeOrdersQueue,
  failedRows: {
    columns:
      "t.id, t.order_number, t.order_key, t.status, t.attempts, t.last_error, t.created_at, t.updated_at",
    filters: {
      status: { column: "t.status", schema: { type: "string", minLength: 1, maxLength: 50 } },
      order_number: {
        column: "t.order_number",
        schema: { type: "string", minLength: 1, maxLength: 200 },
      },
    },
  },
  create: (ctx) => ({
    workload: makeUploadsWorkload({
      queue: makeOrdersQueue(ctx.pool),
      settings: ctx.settings,
      account: ctx.shipstation,
      logger: ctx.logger,
    }),
  }),
};
