-- Outbox fan-out (docs/architecture.md, fixed names): in the transaction that inserts events, create one
-- webhook_deliveries row per (new event, enabled matching subscription), then wake the
-- reactors once per statement, only if any delivery was created (reactor_wake_deliveries:
-- a NOTIFY in `notify` mode, nothing in `wal` mode; see 070_wake_source.sql).
-- A subscription matches when its event_types is empty, names the event type exactly,
-- or holds 'prefix.*' and the type starts with 'prefix.'.

-- Defined here so the fan-out works before 070 runs; 070 redefines it for the wake source.
DO $$
BEGIN
  IF to_regprocedure('reactor_wake_deliveries()') IS NULL THEN
    CREATE FUNCTION reactor_wake_deliveries() RETURNS void LANGUAGE sql AS
      $f$ SELECT pg_notify('reactor_deliveries', '{"v":1,"table":"webhook_deliveries","op":"INSERT"}') $f$;
  END IF;
END
$$;

CREATE OR REPLACE FUNCTION reactor_outbox_fan_out() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  created bigint;
BEGIN
  WITH inserted AS (
    INSERT INTO webhook_deliveries (event_id, subscription_id)
    SELECT e.id, s.id
    FROM new_rows e
    JOIN webhook_subscriptions s ON s.enabled AND (
      cardinality(s.event_types) = 0
      OR e.event_type = ANY (s.event_types)
      OR EXISTS (
        SELECT 1 FROM unnest(s.event_types) AS p(pattern)
        WHERE right(p.pattern, 2) = '.*' AND starts_with(e.event_type, left(p.pattern, -1))
      )
    )
    ON CONFLICT (event_id, subscription_id) DO NOTHING
    RETURNING 1
  )
  SELECT count(*) INTO created FROM inserted;
  IF created > 0 THEN
    PERFORM reactor_wake_deliveries();
  END IF;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS reactor_outbox_fan_out ON outbox_events;
CREATE TRIGGER reactor_outbox_fan_out
  AFTER INSERT ON outbox_events
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION reactor_outbox_fan_out();

-- Manual retries (failed → pending) and released leases wake the reactors at once; the
-- reactor's own claims and scheduled retries do not: the row trigger's WHEN clause
-- (sql/070_wake_source.sql) lets only rows that became claimable run this. A name of its
-- own, which an earlier version's migrate never redefines.
CREATE OR REPLACE FUNCTION reactor_deliveries_wake_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('reactor_deliveries', '{"v":1,"table":"webhook_deliveries","op":"UPDATE"}');
  RETURN NULL;
END
$$;

-- The statement trigger of earlier versions, until 070 replaces it (see
-- reactor_orders_notify_update in 010_orders_inbox.sql).
CREATE OR REPLACE FUNCTION reactor_deliveries_notify_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_LEVEL = 'ROW' THEN
    PERFORM pg_notify('reactor_deliveries', '{"v":1,"table":"webhook_deliveries","op":"UPDATE"}');
  ELSIF EXISTS (
    SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.state = 'pending' AND n.locked_by IS NULL AND n.next_attempt_at <= now()
      AND (o.state <> 'pending' OR o.locked_by IS NOT NULL)
  ) THEN
    PERFORM pg_notify('reactor_deliveries', '{"v":1,"table":"webhook_deliveries","op":"UPDATE"}');
  END IF;
  RETURN NULL;
END
$$;


-- Subscriptions keep updated_at honest for the admin API.
CREATE OR REPLACE FUNCTION reactor_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS reactor_subscriptions_touch ON webhook_subscriptions;
CREATE TRIGGER reactor_subscriptions_touch
  BEFORE UPDATE ON webhook_subscriptions
  FOR EACH ROW EXECUTE FUNCTION reactor_touch_updated_at();
