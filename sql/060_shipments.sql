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
-- sql/070_wake_source.sql).
CREATE OR REPLACE FUNCTION reactor_shipments_notify_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('reactor_shipments', '{"v":1,"table":"shipstation_notifications","op":"UPDATE"}');
  RETURN NULL;
END
$$;

