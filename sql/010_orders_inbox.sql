-- Triggers on orders_inbox (docs/architecture.md, invariant 2): one tiny NOTIFY per statement, only when
-- some row became due for upload; and the re-queue rule for changed open orders.
-- Applied by `npm run migrate` after the drizzle migrations; safe to run again.

-- A business change (status, payload, number, key) stamps updated_at, and puts an
-- uploaded or failed order that is not shipped back to pending: ShipStation's
-- createorder upserts by orderKey, so re-sending updates the order there. A shipment
-- applied or voided by the shipments workload is not sent back. The drainer
-- compares updated_at at finalize time, so a change made while an upload is in flight
-- is sent again rather than lost.
CREATE OR REPLACE FUNCTION reactor_orders_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF (NEW.status, NEW.payload, NEW.order_number, NEW.order_key)
     IS DISTINCT FROM (OLD.status, OLD.payload, OLD.order_number, OLD.order_key) THEN
    -- A change that records or clears a shipment came from ShipStation (the shipments
    -- workload): there is nothing to send back, and an upload in flight is not stale.
    IF NEW.shipstation_shipment_id IS DISTINCT FROM OLD.shipstation_shipment_id THEN
      RETURN NEW;
    END IF;
    NEW.updated_at := clock_timestamp();
    IF NEW.status <> 'shipped'
       AND OLD.upload_state IN ('uploaded', 'failed')
       AND NEW.upload_state = OLD.upload_state THEN
      NEW.upload_state := 'pending';
      NEW.attempts := 0;
      NEW.next_attempt_at := now();
      NEW.last_error := NULL;
    END IF;
  END IF;
  RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS reactor_orders_before_update ON orders_inbox;
-- The WHEN clause keeps claims and finalizes (which change only work columns) from
-- running the function at all.
CREATE TRIGGER reactor_orders_before_update
  BEFORE UPDATE ON orders_inbox
  FOR EACH ROW
  WHEN ((NEW.status, NEW.payload, NEW.order_number, NEW.order_key)
        IS DISTINCT FROM (OLD.status, OLD.payload, OLD.order_number, OLD.order_key))
  EXECUTE FUNCTION reactor_orders_before_update();

-- INSERT: notify once per statement if any inserted row is pending.
CREATE OR REPLACE FUNCTION reactor_orders_notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM new_rows WHERE upload_state = 'pending') THEN
    PERFORM pg_notify('reactor_orders', '{"v":1,"table":"orders_inbox","op":"INSERT"}');
  END IF;
  RETURN NULL;
END
$$;


-- UPDATE: notify when rows became claimable now (re-queued, manually retried, or released
-- by a stopping reactor). A row trigger whose WHEN clause (sql/070_wake_source.sql) lets
-- only such rows through, so the reactor's own claims and finalizes neither run it nor
-- capture transition tables, and its work never wakes itself in a loop. PostgreSQL sends
-- identical notifications of one transaction once: a 10,000-row retry still sends one.
-- A name of its own: an earlier version's migrate (a replica of it starting again)
-- redefines reactor_orders_notify_update, never this.
CREATE OR REPLACE FUNCTION reactor_orders_wake_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('reactor_orders', '{"v":1,"table":"orders_inbox","op":"UPDATE"}');
  RETURN NULL;
END
$$;

-- What the UPDATE trigger of earlier versions calls: a statement trigger with transition
-- tables. Each sql/ file commits on its own, so such a trigger stays until 070 replaces
-- it, for ever if 070 cannot take its locks; meanwhile it must still wake only when some
-- row became claimable, or every claim and finalize would wake the replicas in a loop.
CREATE OR REPLACE FUNCTION reactor_orders_notify_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_LEVEL = 'ROW' THEN
    -- A row trigger of this name has the WHEN clause: the row became claimable.
    PERFORM pg_notify('reactor_orders', '{"v":1,"table":"orders_inbox","op":"UPDATE"}');
  ELSIF EXISTS (
    SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.upload_state = 'pending' AND n.locked_by IS NULL AND n.next_attempt_at <= now()
      AND (o.upload_state <> 'pending' OR o.locked_by IS NOT NULL)
  ) THEN
    PERFORM pg_notify('reactor_orders', '{"v":1,"table":"orders_inbox","op":"UPDATE"}');
  END IF;
  RETURN NULL;
END
$$;


-- An order inserted without order_key uploads under its id. If some other row already
-- holds that id as its key, the new row gets a key of its own instead of being refused
-- (upload_key is unique: two rows may never share a ShipStation orderKey).
CREATE OR REPLACE FUNCTION reactor_orders_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM orders_inbox WHERE upload_key = NEW.id::text) THEN
    NEW.order_key := 'pgr-id-' || NEW.id;
  END IF;
  RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS reactor_orders_before_insert ON orders_inbox;
CREATE TRIGGER reactor_orders_before_insert
  BEFORE INSERT ON orders_inbox
  FOR EACH ROW
  WHEN (NEW.order_key IS NULL)
  EXECUTE FUNCTION reactor_orders_before_insert();
