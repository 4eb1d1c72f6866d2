-- The wake source (docs/architecture.md, "Wake source"): how writers wake the reactors.
--   notify: triggers send one tiny NOTIFY per transaction that made work due (any
--           PostgreSQL): statement triggers on INSERT, row triggers with a WHEN clause
--           on UPDATE.
--   wal:    no notify trigger exists at all, so writers capture no transition table and
--           take no commit-time NOTIFY lock; each reactor reads the commits from the
--           write-ahead log (publication pg_reactor, a temporary slot per replica).
-- The setting is configuration_params (reactor, wake_source). Changing it switches the
-- triggers in the same transaction (reactor_apply_wake_source), and the config NOTIFY,
-- which stays in both modes, tells every replica to switch its reader.

-- Why this server cannot run `wal` mode, or NULL when it can.
CREATE OR REPLACE FUNCTION reactor_wal_missing() RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
  slots_free int;
  senders_free int;
BEGIN
  IF current_setting('server_version_num')::int < 150000 THEN
    RETURN format('wal mode needs PostgreSQL 15 or later (publication column lists); this server is %s',
                  current_setting('server_version'));
  END IF;
  IF current_setting('wal_level') <> 'logical' THEN
    RETURN format('wal_level is %s; set wal_level = logical and restart PostgreSQL',
                  current_setting('wal_level'));
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND (rolreplication OR rolsuper)) THEN
    RETURN format('role %s may not replicate; ALTER ROLE %s REPLICATION (on RDS and Aurora: GRANT rds_replication TO %s)',
                  current_user, quote_ident(current_user), quote_ident(current_user));
  END IF;
  SELECT current_setting('max_replication_slots')::int - count(*) INTO slots_free FROM pg_replication_slots;
  IF slots_free < 1 THEN
    RETURN format('all %s replication slots are in use; raise max_replication_slots (each replica needs one) and restart PostgreSQL',
                  current_setting('max_replication_slots'));
  END IF;
  SELECT current_setting('max_wal_senders')::int - count(*) INTO senders_free FROM pg_stat_replication;
  IF senders_free < 1 THEN
    RETURN format('all %s WAL senders are in use; raise max_wal_senders (each replica needs one) and restart PostgreSQL',
                  current_setting('max_wal_senders'));
  END IF;
  RETURN NULL;
END
$$;

-- Puts the triggers (and the publication) in the state `mode` needs. Idempotent, so it
-- also repairs: a publication someone dropped or altered is put back as it must be. Its
-- DDL takes each work table's lock for an instant; a transaction holding one makes it
-- give up after 5 s (the function's own lock_timeout) rather than queue every writer
-- behind it.
CREATE OR REPLACE FUNCTION reactor_apply_wake_source(mode text) RETURNS void
LANGUAGE plpgsql SET lock_timeout = '5s' AS $$
DECLARE
  notify_triggers int;
  row_level_updates int;
  publication_right boolean;
BEGIN
  IF mode NOT IN ('notify', 'wal') THEN
    RAISE EXCEPTION 'wake source must be notify or wal, got %', quote_literal(mode);
  END IF;
  -- Only what is not already right is changed: each DDL takes a table lock.
  SELECT count(*) INTO notify_triggers FROM pg_trigger
  WHERE tgname IN ('reactor_orders_notify_insert', 'reactor_orders_notify_update',
                   'reactor_deliveries_notify_update', 'reactor_shipments_notify_insert',
                   'reactor_shipments_notify_update');
  -- Earlier versions made the UPDATE triggers statement triggers, or row triggers calling
  -- the functions an earlier version's migrate redefines: those are replaced.
  SELECT count(*) INTO row_level_updates FROM pg_trigger
  WHERE (tgname, tgrelid, tgfoid) IN (
      ('reactor_orders_notify_update', 'orders_inbox'::regclass,
       'reactor_orders_wake_update()'::regprocedure),
      ('reactor_deliveries_notify_update', 'webhook_deliveries'::regclass,
       'reactor_deliveries_wake_update()'::regprocedure),
      ('reactor_shipments_notify_update', 'shipstation_notifications'::regclass,
       'reactor_shipments_wake_update()'::regprocedure))
    AND tgtype::int & 1 = 1;
  IF mode = 'wal' THEN
    IF notify_triggers > 0 THEN
      DROP TRIGGER IF EXISTS reactor_orders_notify_insert ON orders_inbox;
      DROP TRIGGER IF EXISTS reactor_orders_notify_update ON orders_inbox;
      DROP TRIGGER IF EXISTS reactor_deliveries_notify_update ON webhook_deliveries;
      DROP TRIGGER IF EXISTS reactor_shipments_notify_insert ON shipstation_notifications;
      DROP TRIGGER IF EXISTS reactor_shipments_notify_update ON shipstation_notifications;
    END IF;
    -- The fan-out stays in the writer's transaction; only its wake-up goes.
    CREATE OR REPLACE FUNCTION reactor_wake_deliveries() RETURNS void LANGUAGE sql AS $f$ SELECT $f$;
    -- Only the columns a wake decision reads: a reactor never decodes payloads.
    SELECT count(*) = 3 INTO publication_right
    FROM pg_publication p JOIN pg_publication_tables t ON t.pubname = p.pubname
    WHERE p.pubname = 'pg_reactor' AND p.pubinsert AND p.pubupdate
      AND (t.tablename, (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(t.attnames) a)) IN (
        ('orders_inbox', ARRAY['id', 'locked_by', 'next_attempt_at', 'upload_state']),
        ('webhook_deliveries', ARRAY['id', 'locked_by', 'next_attempt_at', 'state']),
        ('shipstation_notifications', ARRAY['id', 'locked_by', 'next_attempt_at', 'state']));
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'pg_reactor') THEN
      CREATE PUBLICATION pg_reactor
        FOR TABLE orders_inbox (id, upload_state, locked_by, next_attempt_at),
                  webhook_deliveries (id, state, locked_by, next_attempt_at),
                  shipstation_notifications (id, state, locked_by, next_attempt_at)
        WITH (publish = 'insert, update');
    ELSIF NOT publication_right THEN
      -- Dropped tables or columns, or more than ours: put it back as it must be.
      ALTER PUBLICATION pg_reactor
        SET TABLE orders_inbox (id, upload_state, locked_by, next_attempt_at),
                  webhook_deliveries (id, state, locked_by, next_attempt_at),
                  shipstation_notifications (id, state, locked_by, next_attempt_at);
      ALTER PUBLICATION pg_reactor SET (publish = 'insert, update');
    END IF;
    RETURN;
  END IF;
  CREATE OR REPLACE FUNCTION reactor_wake_deliveries() RETURNS void LANGUAGE sql AS
    $f$ SELECT pg_notify('reactor_deliveries', '{"v":1,"table":"webhook_deliveries","op":"INSERT"}') $f$;
  IF notify_triggers = 5 AND row_level_updates = 3 THEN
    RETURN;
  END IF;
  DROP TRIGGER IF EXISTS reactor_orders_notify_insert ON orders_inbox;
  DROP TRIGGER IF EXISTS reactor_orders_notify_update ON orders_inbox;
  DROP TRIGGER IF EXISTS reactor_deliveries_notify_update ON webhook_deliveries;
  DROP TRIGGER IF EXISTS reactor_shipments_notify_insert ON shipstation_notifications;
  DROP TRIGGER IF EXISTS reactor_shipments_notify_update ON shipstation_notifications;
  CREATE TRIGGER reactor_orders_notify_insert
    AFTER INSERT ON orders_inbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION reactor_orders_notify_insert();
  -- UPDATE wakes only for rows that became claimable now (pending, not leased, due) and
  -- were not before (another state, leased, or scheduled later: an operator moving
  -- waiting retries to now must not wait for the safety poll, and the `wal` reader wakes
  -- on that too; the reactor itself never moves an unleased row's time). Row triggers
  -- with that WHEN clause, not statement triggers with transition tables: a claim, a
  -- finalize or a scheduled retry then costs the test of the clause per row and nothing
  -- else, where capturing the old and new rows of every claim and finalize cost the
  -- bench's no-op drain about 6 % of its throughput (more with wider rows). Each calls a function of its own name (010, 020,
  -- 060) that no earlier version's migrate redefines.
  CREATE TRIGGER reactor_orders_notify_update
    AFTER UPDATE ON orders_inbox
    FOR EACH ROW
    WHEN (NEW.upload_state = 'pending' AND NEW.locked_by IS NULL AND NEW.next_attempt_at <= now()
          AND (OLD.upload_state <> 'pending' OR OLD.locked_by IS NOT NULL
               OR OLD.next_attempt_at > now()))
    EXECUTE FUNCTION reactor_orders_wake_update();
  CREATE TRIGGER reactor_deliveries_notify_update
    AFTER UPDATE ON webhook_deliveries
    FOR EACH ROW
    WHEN (NEW.state = 'pending' AND NEW.locked_by IS NULL AND NEW.next_attempt_at <= now()
          AND (OLD.state <> 'pending' OR OLD.locked_by IS NOT NULL OR OLD.next_attempt_at > now()))
    EXECUTE FUNCTION reactor_deliveries_wake_update();
  CREATE TRIGGER reactor_shipments_notify_insert
    AFTER INSERT ON shipstation_notifications
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION reactor_shipments_notify_insert();
  CREATE TRIGGER reactor_shipments_notify_update
    AFTER UPDATE ON shipstation_notifications
    FOR EACH ROW
    WHEN (NEW.state = 'pending' AND NEW.locked_by IS NULL AND NEW.next_attempt_at <= now()
          AND (OLD.state <> 'pending' OR OLD.locked_by IS NOT NULL OR OLD.next_attempt_at > now()))
    EXECUTE FUNCTION reactor_shipments_wake_update();
EXCEPTION WHEN lock_not_available THEN
  RAISE EXCEPTION 'switching the wake source needs an instant''s lock on orders_inbox, webhook_deliveries and shipstation_notifications, and a transaction held one for 5 s (lock timeout); nothing was changed, try again'
    USING ERRCODE = 'lock_not_available';
END
$$;

-- The stored wake source (default notify).
CREATE OR REPLACE FUNCTION reactor_wake_source() RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT coalesce(
    (SELECT lower(btrim(value)) FROM configuration_params
     WHERE category = 'reactor' AND parameter_name = 'wake_source' AND sku IS NULL),
    'notify')
$$;

-- `wal` is refused at write time where the server cannot do it, with what is missing.
-- Where wal is already in force (the running replicas hold the slots it would count),
-- saying wal again is not checked.
CREATE OR REPLACE FUNCTION reactor_wake_source_check() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  missing text;
BEGIN
  IF lower(btrim(NEW.value)) = 'wal' AND reactor_wake_source() <> 'wal' THEN
    missing := reactor_wal_missing();
    IF missing IS NOT NULL THEN
      RAISE EXCEPTION 'reactor.wake_source cannot be wal: %', missing
        USING ERRCODE = 'check_violation';
    END IF;
  END IF;
  RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS reactor_wake_source_check ON configuration_params;
CREATE TRIGGER reactor_wake_source_check
  BEFORE INSERT OR UPDATE ON configuration_params
  FOR EACH ROW
  WHEN (NEW.category = 'reactor' AND NEW.parameter_name = 'wake_source' AND NEW.sku IS NULL)
  EXECUTE FUNCTION reactor_wake_source_check();

-- A change of that row (a DELETE means the default, notify) switches the triggers in the
-- writer's transaction, and only when the mode changed: the DDL takes each table's
-- exclusive lock for an instant, which no other configuration write should pay.
CREATE OR REPLACE FUNCTION reactor_wake_source_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  mode text := reactor_wake_source();
  notifying boolean := EXISTS (
    SELECT 1 FROM pg_trigger
    WHERE tgname = 'reactor_orders_notify_insert' AND tgrelid = 'orders_inbox'::regclass);
BEGIN
  IF (mode = 'notify') IS DISTINCT FROM notifying THEN
    PERFORM reactor_apply_wake_source(mode);
  END IF;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS reactor_wake_source_apply ON configuration_params;
CREATE TRIGGER reactor_wake_source_apply
  AFTER INSERT ON configuration_params
  FOR EACH ROW
  WHEN (NEW.category = 'reactor' AND NEW.parameter_name = 'wake_source' AND NEW.sku IS NULL)
  EXECUTE FUNCTION reactor_wake_source_apply();

-- An UPDATE that moves the row out of the setting (another sku or category) is a removal.
DROP TRIGGER IF EXISTS reactor_wake_source_apply_update ON configuration_params;
CREATE TRIGGER reactor_wake_source_apply_update
  AFTER UPDATE ON configuration_params
  FOR EACH ROW
  WHEN ((NEW.category = 'reactor' AND NEW.parameter_name = 'wake_source' AND NEW.sku IS NULL)
     OR (OLD.category = 'reactor' AND OLD.parameter_name = 'wake_source' AND OLD.sku IS NULL))
  EXECUTE FUNCTION reactor_wake_source_apply();

DROP TRIGGER IF EXISTS reactor_wake_source_apply_delete ON configuration_params;
CREATE TRIGGER reactor_wake_source_apply_delete
  AFTER DELETE ON configuration_params
  FOR EACH ROW
  WHEN (OLD.category = 'reactor' AND OLD.parameter_name = 'wake_source' AND OLD.sku IS NULL)
  EXECUTE FUNCTION reactor_wake_source_apply();

-- TRUNCATE fires no row trigger; it removes the row all the same.
DROP TRIGGER IF EXISTS reactor_wake_source_apply_truncate ON configuration_params;
CREATE TRIGGER reactor_wake_source_apply_truncate
  AFTER TRUNCATE ON configuration_params
  FOR EACH STATEMENT EXECUTE FUNCTION reactor_wake_source_apply();

SELECT reactor_apply_wake_source(reactor_wake_source());
