-- The shared budget behind an outside account's rate limit (docs/architecture.md,
-- invariant 9): every replica takes its slots here, so N replicas make at most `limit`
-- calls in any window between them. Applied by `npm run migrate`; safe to run again.

-- Takes one slot of budget `p_name` when fewer than `p_limit` were taken in the last
-- `p_window` and no pause is in force. Returns wait_ms = 0 when a slot was taken, else
-- how long until one frees up (taking nothing), and the pause in force, if any. The row
-- lock serialises takers for the length of this call only.
CREATE OR REPLACE FUNCTION reactor_rate_take(p_name text, p_limit integer, p_window interval)
RETURNS TABLE (wait_ms double precision, paused_until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  now_ts timestamptz := clock_timestamp();
  sent timestamptz[];
  pause timestamptz;
  recent timestamptz[];
BEGIN
  SELECT r.sent_at, r.paused_until INTO sent, pause
  FROM reactor_rate_limits r WHERE r.name = p_name FOR UPDATE;
  IF NOT FOUND THEN
    INSERT INTO reactor_rate_limits (name) VALUES (p_name) ON CONFLICT (name) DO NOTHING;
    SELECT r.sent_at, r.paused_until INTO sent, pause
    FROM reactor_rate_limits r WHERE r.name = p_name FOR UPDATE;
  END IF;
  IF pause > now_ts THEN
    RETURN QUERY SELECT extract(epoch FROM pause - now_ts)::float8 * 1000, pause;
    RETURN;
  END IF;
  SELECT coalesce(array_agg(s ORDER BY s), '{}') INTO recent
  FROM unnest(sent) s WHERE s > now_ts - p_window;
  IF cardinality(recent) >= p_limit THEN
    -- The slot frees when enough of the window's sends have aged out of it.
    RETURN QUERY SELECT
      greatest(1, extract(epoch FROM recent[cardinality(recent) - p_limit + 1] + p_window - now_ts)::float8 * 1000),
      NULL::timestamptz;
    RETURN;
  END IF;
  UPDATE reactor_rate_limits r SET sent_at = recent || now_ts, updated_at = now_ts
  WHERE r.name = p_name;
  RETURN QUERY SELECT 0::float8, NULL::timestamptz;
END
$$;

-- The target said to stop for `p_ms` milliseconds (429, or X-Rate-Limit-Remaining: 0):
-- every replica's next take waits for it. Extends a pause, never shortens it. The end
-- is computed on the database's clock, so a replica whose clock is off cannot stretch
-- or lose the pause.
DROP FUNCTION IF EXISTS reactor_rate_pause(text, timestamptz);
CREATE OR REPLACE FUNCTION reactor_rate_pause(p_name text, p_ms double precision)
RETURNS timestamptz
LANGUAGE sql AS $$
  INSERT INTO reactor_rate_limits AS r (name, paused_until, updated_at)
  VALUES (p_name, clock_timestamp() + make_interval(secs => p_ms / 1000), now())
  ON CONFLICT (name) DO UPDATE
    SET paused_until = greatest(coalesce(r.paused_until, excluded.paused_until), excluded.paused_until),
        updated_at = now()
  RETURNING paused_until;
$$;
