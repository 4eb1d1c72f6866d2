-- shipstation_notifications (docs/architecture.md, invariant 2): the hook inserts one row
-- per SHIP_NOTIFY; one tiny NOTIFY per statement wakes the shipments workload. Manual
-- retries and released leases wake it too; its own claims and scheduled retries do not.
-- Applied by `npm run migrate` after the drizzle migrations; safe to run again.

CREATE OR REPLACE FUNCTION reactor_shipments_notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM new_rows WHERE state = 'pending') THEN
    PERFORM pg_notify('reactor_shipments', '{"v":1,"table":"shipstation_notifications","op":"INSERT"}');
  END IF;
  RETURN NULL;
END
$$;


-- Run only for rows that became claimable (the row trigger's WHEN clause,
-- sql/070_wake_source.sql). A name of its own, which an earlier version's migrate never
-- redefines.
CREATE OR REPLACE FUNCTION reactor_shipments_wake_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('reactor_shipments', '{"v":1,"table":"shipstation_notifications","op":"UPDATE"}');
  RETURN NULL;
END
$$;

-- The statement trigger of earlier versions, until 070 replaces it (see
-- reactor_orders_notify_update in 010_orders_inbox.sql).
CREATE OR REPLACE FUNCTION reactor_shipments_notify_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_LEVEL = 'ROW' THEN
    PERFORM pg_notify('reactor_shipments', '{"v":1,"table":"shipstation_notifications","op":"UPDATE"}');
  ELSIF EXISTS (
    SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.state = 'pending' AND n.locked_by IS NULL AND n.next_attempt_at <= now()
      AND (o.state <> 'pending' OR o.locked_by IS NOT NULL)
  ) THEN
    PERFORM pg_notify('reactor_shipments', '{"v":1,"table":"shipstation_notifications","op":"UPDATE"}');
  END IF;
  RETURN NULL;
END
$$;

