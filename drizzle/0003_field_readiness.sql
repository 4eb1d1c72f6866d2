CREATE TABLE "reactor_rate_limits" (
	"name" text PRIMARY KEY NOT NULL,
	"sent_at" timestamp with time zone[] DEFAULT '{}'::timestamptz[] NOT NULL,
	"paused_until" timestamp with time zone,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
-- Rows without order_key used their id as ShipStation's orderKey, which another row's
-- order_key could equal (two orders merged by ShipStation's upsert). ShipStation's order
-- under that key holds whichever was sent last: send the keyed row again, and give the
-- row without a key a key of its own (the change re-queues it), so ShipStation gets both.
UPDATE "orders_inbox" x SET "upload_state" = 'pending', "next_attempt_at" = now(), "attempts" = 0, "last_error" = NULL
WHERE x.upload_state = 'uploaded' AND EXISTS (SELECT 1 FROM "orders_inbox" o WHERE o.order_key IS NULL AND x.order_key = o.id::text);--> statement-breakpoint
UPDATE "orders_inbox" o SET "order_key" = 'pgr-id-' || o.id
WHERE o.order_key IS NULL AND EXISTS (SELECT 1 FROM "orders_inbox" x WHERE x.order_key = o.id::text);--> statement-breakpoint
ALTER TABLE "orders_inbox" ADD COLUMN "upload_key" text GENERATED ALWAYS AS (coalesce(order_key, (id)::text)) STORED NOT NULL;--> statement-breakpoint
ALTER TABLE "orders_inbox" ADD CONSTRAINT "order_key_must_differ_from_other_orders_keys_and_ids" UNIQUE("upload_key");