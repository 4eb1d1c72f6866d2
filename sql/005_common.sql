-- Shared trigger function for work tables: after an UPDATE statement, notify the
-- table's channel once if some row became claimable now (re-queued, manually retried,
-- or released by a stopping reactor). The reactor's own claims and scheduled retries do
-- not qualify, so its work never wakes itself in a loop.
-- Arguments: channel, state column, pending value. Used with
-- REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT.
CREATE OR REPLACE FUNCTION reactor_notify_became_due() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  due boolean;
BEGIN
  EXECUTE format(
    'SELECT EXISTS (
       SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
       WHERE n.%1$I = $1 AND n.locked_by IS NULL AND n.next_attempt_at <= now()
         AND (o.%1$I <> $1 OR o.locked_by IS NOT NULL))',
    TG_ARGV[1])
  INTO due USING TG_ARGV[2];
  IF due THEN
    PERFORM pg_notify(TG_ARGV[0], json_build_object('v', 1, 'table', TG_TABLE_NAME, 'op', 'UPDATE')::text);
  END IF;
  RETURN NULL;
END
$$;
