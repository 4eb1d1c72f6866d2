// The tables, as drizzle sees them. drizzle-kit generates drizzle/*.sql from this file;
// triggers and functions are plain SQL in sql/. Names are fixed (docs/architecture.md §3).
import { sql } from "drizzle-orm";
import {
  bigint,
  boolean,
  check,
  index,
  integer,
  jsonb,
  pgTable,
  text,
  timestamp,
  unique,
  uuid,
} from "drizzle-orm/pg-core";

const tz = (name: string) => timestamp(name, { withTimezone: true, mode: "date" });

/** Orders written by the app; the uploads workload pushes them to ShipStation. */
export const ordersInbox = pgTable(
  "orders_inbox",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    orderNumber: text("order_number").notNull(),
    orderKey: text("order_key").unique(),
    /**
     * The orderKey ShipStation upserts on: order_key, or the id when it is null. Unique,
     * so a row without order_key can never share its key with another row (an app
     * inserting order_key '9' while row 9 has none is refused, instead of two orders
     * merging in ShipStation).
     */
    uploadKey: text("upload_key")
      .notNull()
      .unique("order_key_must_differ_from_other_orders_keys_and_ids")
      .generatedAlwaysAs(sql`coalesce(order_key, (id)::text)`),
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
    // Written by the shipments workload when ShipStation ships (or voids) the order.
    shippedAt: tz("shipped_at"),
    trackingNumber: text("tracking_number"),
    carrierCode: text("carrier_code"),
    serviceCode: text("service_code"),
    shipstationShipmentId: bigint("shipstation_shipment_id", { mode: "number" }),
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
    // Shipments of orders not uploaded by the reactor are matched by orderNumber.
    index("orders_inbox_order_number_idx").on(t.orderNumber),
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

/** Debezium-style outbox: apps INSERT events in the same transaction as their change. */
export const outboxEvents = pgTable(
  "outbox_events",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    aggregateType: text("aggregate_type").notNull(),
    aggregateId: text("aggregate_id").notNull(),
    eventType: text("event_type").notNull(),
    payload: jsonb("payload").notNull(),
    createdAt: tz("created_at").notNull().defaultNow(),
  },
  (t) => [index("outbox_events_created_at_idx").on(t.createdAt)],
);

/** A secret is `whsec_` + base64 of 24 to 64 random bytes (Standard Webhooks). */
const secretCheck = (column: string) =>
  sql.raw(`CASE
  WHEN ${column} IS NULL THEN true
  WHEN ${column} ~ '^whsec_(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$'
    THEN octet_length(decode(substr(${column}, 7), 'base64')) BETWEEN 24 AND 64
  ELSE false END`);

/** Where events go. event_types entries are exact names or `prefix.*`; empty means all. */
export const webhookSubscriptions = pgTable(
  "webhook_subscriptions",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    url: text("url").notNull(),
    secret: text("secret").notNull(),
    previousSecret: text("previous_secret"),
    /** After this, previous_secret no longer signs (end of the rotation grace period). */
    previousSecretExpiresAt: tz("previous_secret_expires_at"),
    eventTypes: text("event_types").array().notNull().default(sql`'{}'::text[]`),
    enabled: boolean("enabled").notNull().default(true),
    disabledReason: text("disabled_reason"),
    description: text("description"),
    createdAt: tz("created_at").notNull().defaultNow(),
    updatedAt: tz("updated_at").notNull().defaultNow(),
  },
  (t) => [
    // Constraint names are the error messages people see, so they say what is expected.
    check("url_must_be_http_or_https", sql`${t.url} ~* '^https?://[^/?#[:space:]]+'`),
    check("secret_must_be_whsec_base64_of_24_to_64_bytes", secretCheck("secret")),
    check("previous_secret_must_be_whsec_base64_of_24_to_64_bytes", secretCheck("previous_secret")),
    check(
      "event_types_must_be_dot_names_or_prefix_star",
      sql`array_position(${t.eventTypes}, NULL) IS NULL AND array_to_string(${t.eventTypes}, ' ') ~ '^([A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*(\\.\\*)?( |$))*$'`,
    ),
  ],
);

/** One row per (event, subscription), created by the outbox trigger in the event's transaction. */
export const webhookDeliveries = pgTable(
  "webhook_deliveries",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    eventId: uuid("event_id")
      .notNull()
      .references(() => outboxEvents.id, { onDelete: "cascade" }),
    subscriptionId: bigint("subscription_id", { mode: "number" })
      .notNull()
      .references(() => webhookSubscriptions.id, { onDelete: "cascade" }),
    state: text("state").notNull().default("pending"),
    attempts: integer("attempts").notNull().default(0),
    nextAttemptAt: tz("next_attempt_at").notNull().defaultNow(),
    lockedBy: text("locked_by"),
    lockedUntil: tz("locked_until"),
    lastStatus: integer("last_status"),
    lastError: text("last_error"),
    deliveredAt: tz("delivered_at"),
    createdAt: tz("created_at").notNull().defaultNow(),
  },
  (t) => [
    unique("webhook_deliveries_event_subscription_key").on(t.eventId, t.subscriptionId),
    check(
      "webhook_deliveries_state_check",
      sql`${t.state} IN ('pending', 'delivered', 'failed', 'cancelled')`,
    ),
    index("webhook_deliveries_due_idx")
      .on(t.nextAttemptAt, t.id)
      .where(sql`${t.state} = 'pending'`),
    index("webhook_deliveries_subscription_pending_idx")
      .on(t.subscriptionId)
      .where(sql`${t.state} = 'pending'`),
    index("webhook_deliveries_failed_idx").on(t.id).where(sql`${t.state} = 'failed'`),
    index("webhook_deliveries_event_idx").on(t.eventId),
    index("webhook_deliveries_final_idx")
      .on(t.createdAt)
      .where(sql`${t.state} IN ('delivered', 'cancelled')`),
  ],
);

/**
 * One row per HTTP attempt of a delivery (what the console shows for it), written by the
 * same statement that records the attempt's outcome. `attempt` is the delivery's attempt
 * number then; an operator's retry starts the numbers again, so it is not unique. Deleted
 * with its delivery (retention, a deleted subscription).
 */
export const webhookDeliveryAttempts = pgTable(
  "webhook_delivery_attempts",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    deliveryId: bigint("delivery_id", { mode: "number" })
      .notNull()
      .references(() => webhookDeliveries.id, { onDelete: "cascade" }),
    attempt: integer("attempt").notNull(),
    startedAt: tz("started_at").notNull(),
    durationMs: integer("duration_ms").notNull(),
    /** The HTTP status; null when no answer came (timeout, connection error, refused). */
    status: integer("status"),
    error: text("error"),
    /** The first 1 KiB of the response body, secrets redacted. */
    responseExcerpt: text("response_excerpt"),
  },
  (t) => [
    check(
      "response_excerpt_must_be_at_most_1024_bytes",
      sql`octet_length(${t.responseExcerpt}) <= 1024`,
    ),
    // A delivery's attempts in order, and the cascade from a deleted delivery.
    index("webhook_delivery_attempts_delivery_idx").on(t.deliveryId, t.id),
    // Subscriptions' recent success rates read the last day of attempts.
    index("webhook_delivery_attempts_started_idx").on(t.startedAt),
  ],
);

/**
 * Budgets that belong to an outside account and are shared by every replica (ShipStation
 * allows 40 calls a minute per key pair): the send times in the current window, and a
 * pause the target imposed (429, X-Rate-Limit-Remaining: 0).
 */
export const reactorRateLimits = pgTable("reactor_rate_limits", {
  name: text("name").primaryKey(),
  sentAt: tz("sent_at").array().notNull().default(sql`'{}'::timestamptz[]`),
  pausedUntil: tz("paused_until"),
  updatedAt: tz("updated_at").notNull().defaultNow(),
});

/** One SHIP_NOTIFY received on the hook; the shipments workload fetches its resource_url. */
export const shipstationNotifications = pgTable(
  "shipstation_notifications",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    resourceType: text("resource_type").notNull(),
    resourceUrl: text("resource_url").notNull(),
    receivedAt: tz("received_at").notNull().defaultNow(),
    state: text("state").notNull().default("pending"),
    attempts: integer("attempts").notNull().default(0),
    nextAttemptAt: tz("next_attempt_at").notNull().defaultNow(),
    lockedBy: text("locked_by"),
    lockedUntil: tz("locked_until"),
    lastError: text("last_error"),
    processedAt: tz("processed_at"),
    /** Shipments the resource held, and how many of them changed an order. */
    shipments: integer("shipments"),
    applied: integer("applied"),
  },
  (t) => [
    check(
      "shipstation_notifications_state_check",
      sql`${t.state} IN ('pending', 'done', 'failed')`,
    ),
    index("shipstation_notifications_due_idx")
      .on(t.nextAttemptAt, t.id)
      .where(sql`${t.state} = 'pending'`),
    index("shipstation_notifications_failed_idx").on(t.id).where(sql`${t.state} = 'failed'`),
    index("shipstation_notifications_done_idx").on(t.receivedAt).where(sql`${t.state} = 'done'`),
  ],
);

/**
 * Every shipment applied, by ShipStation's shipmentId: what makes applying it again (a
 * repeated webhook, the poll's overlap) change nothing and emit nothing.
 */
export const shipstationShipments = pgTable(
  "shipstation_shipments",
  {
    shipmentId: bigint("shipment_id", { mode: "number" }).primaryKey(),
    /**
     * The order it shipped; null when this database does not know the order. No foreign
     * key: this is a record of what ShipStation did, and it must not stop an app from
     * deleting or truncating its orders.
     */
    orderId: bigint("order_id", { mode: "number" }),
    voided: boolean("voided").notNull().default(false),
    /**
     * What the shipment said, so that voiding one of an order's split shipments can put
     * the one still standing back on the order.
     */
    shippedAt: tz("shipped_at"),
    trackingNumber: text("tracking_number"),
    carrierCode: text("carrier_code"),
    serviceCode: text("service_code"),
    /** webhook or poll: which path saw it first. */
    source: text("source").notNull(),
    appliedAt: tz("applied_at").notNull().defaultNow(),
    updatedAt: tz("updated_at").notNull().defaultNow(),
  },
  (t) => [index("shipstation_shipments_order_idx").on(t.orderId)],
);

/** Watermarks of slow polls; the shipment poll's row is named `shipstation_shipments`. */
export const reactorSyncState = pgTable("reactor_sync_state", {
  name: text("name").primaryKey(),
  watermark: tz("watermark"),
  updatedAt: tz("updated_at").notNull().defaultNow(),
});

/** One row per imported XML document (a file in IMPORT_DIR, POST /admin/imports, the CLI). */
export const importFiles = pgTable(
  "import_files",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedByDefaultAsIdentity(),
    fileName: text("file_name").notNull(),
    /** Of the bytes: the same content is never imported twice. */
    sha256: text("sha256").notNull().unique("import_files_sha256_key"),
    state: text("state").notNull(),
    /** Orders the document held (imported) or 0 (failed). */
    orders: integer("orders").notNull().default(0),
    error: text("error"),
    importedAt: tz("imported_at").notNull().defaultNow(),
  },
  (t) => [check("import_files_state_check", sql`${t.state} IN ('imported', 'failed')`)],
);
