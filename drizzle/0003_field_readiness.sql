CREATE TABLE "reactor_rate_limits" (
	"name" text PRIMARY KEY NOT NULL,
	"sent_at" timestamp with time zone[] DEFAULT '{}'::timestamptz[] NOT NULL,
	"paused_until" timestamp with time zone,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
-- Rows without order_key used their id as ShipStation's orderKey, which another row's
-- order_key could equal (two orders merged by ShipStation's upsert). Give such rows a key
-- of their own first; the change re-queues them, so ShipStation gets them separately.
UPDATE "orders_inbox" o SET "order_key" = 'pgr-id-' || o.id
WHERE o.order_key IS NULL AND EXISTS (SELECT 1 FROM "orders_inbox" x WHERE x.order_key = o.id::text);--> statement-breakpoint
ALTER TABLE "orders_inbox" ADD COLUMN "upload_key" text GENERATED ALWAYS AS (coalesce(order_key, (id)::text)) STORED NOT NULL;--> statement-breakpoint
ALTER TABLE "orders_inbox" ADD CONSTRAINT "order_key_must_differ_from_other_orders_keys_and_ids" UNIQUE("upload_key");