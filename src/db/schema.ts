// The tables, as drizzle sees them. drizzle-kit generates drizzle/*.sql from this file;
// triggers and functions are plain SQL in sql/. Names are fixed by DESIGN.md §4.
import { sql } from "drizzle-orm";
import {
  bigint,
  check,
  index,
  integer,
  jsonb,
  pgTable,
  text,
  timestamp,
  unique,
} from "drizzle-orm/pg-core";

const tz = (name: string) => timestamp(name, { withTimezone: true, mode: "date" });

/** Orders written by the app; the uploads workload pushes them to ShipStation. */
export const ordersInbox = pgTable(
  "orders_inbox",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    orderNumber: text("order_number").notNull(),
    orderKey: text("order_key").unique(),
    status: text("status").notNull().default("awaiting_shipment"),
    payload: jsonb("payload").notNull(),
    uploadState: text("upload_state").notNull().default("pending"),
    attempts: integer("attempts").notNull().default(0),
    nextAttemptAt: tz("next_attempt_at").notNull().defaultNow(),
    lockedBy: text("locked_by"),
    lockedUntil: tz("locked_until"),
    lastError: text("last_error"),
    shipstationOrderId: bigint("shipstation_order_id", { mode: "number" }),
    uploadedAt: tz("uploaded_at"),
    createdAt: tz("created_at").notNull().defaultNow(),
    updatedAt: tz("updated_at").notNull().defaultNow(),
  },
  (t) => [
    check(
      "orders_inbox_upload_state_check",
      sql`${t.uploadState} IN ('pending', 'uploaded', 'failed')`,
    ),
    // Keeps the claim an index scan at any backlog: only pending rows are indexed.
    index("orders_inbox_due_idx")
      .on(t.nextAttemptAt, t.id)
      .where(sql`${t.uploadState} = 'pending'`),
    index("orders_inbox_failed_idx").on(t.id).where(sql`${t.uploadState} = 'failed'`),
  ],
);

/** The operators' existing settings table; the reactor owns category 'reactor'. */
export const configurationParams = pgTable(
  "configuration_params",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    category: text("category").notNull(),
    parameterName: text("parameter_name").notNull(),
    value: text("value"),
    sku: text("sku"),
    description: text("description"),
    updatedAt: tz("updated_at").notNull().defaultNow(),
  },
  (t) => [
    unique("configuration_params_category_parameter_name_sku_key")
      .on(t.category, t.parameterName, t.sku)
      .nullsNotDistinct(),
  ],
);

/** Which sql/ files have been applied, with their checksum, so migrate is a no-op when unchanged. */
export const reactorSqlFiles = pgTable("reactor_sql_files", {
  name: text("name").primaryKey(),
  checksum: text("checksum").notNull(),
  appliedAt: tz("applied_at").notNull().defaultNow(),
});
