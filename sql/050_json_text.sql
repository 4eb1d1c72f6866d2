-- Claimed payloads as text, with a bound (docs/architecture.md, invariant 6): a claim
-- must never fail, stall, or pull gigabytes because of one row. Returns NULL instead of
-- the text when the value is over max_bytes, either as stored (uncompressed jsonb, cheap
-- to know) or as text, or when it holds a number beyond +-1e100 or a nonzero one within
-- +-1e-100. PostgreSQL prints every digit of such a number: a few kilobytes of 1e131071
-- take seconds of CPU to expand toward the 1 GB limit, long enough to time a claim out
-- and so block the queue behind that row. Below 1e100 a number's text is at most about
-- 13 times its stored size, so the 8x check bounds the work. Applied by migrate; safe to
-- rerun.
-- PARALLEL UNSAFE: its EXCEPTION block opens a subtransaction, which a parallel query
-- refuses ("cannot start subtransactions during a parallel operation").
CREATE OR REPLACE FUNCTION reactor_json_text(j jsonb, max_bytes integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL UNSAFE AS $$
DECLARE
  t text;
BEGIN
  -- Text is never below an eighth of the binary size (an array of small numbers is
  -- about a fifth): over 8 times the limit is over the limit, without converting it.
  IF pg_column_size(j) > 8::bigint * max_bytes THEN
    RETURN NULL;
  END IF;
  IF jsonb_path_exists(j, 'strict $.** ? (@.type() == "number" && (@ >= 1e100 || @ <= -1e100 || (@ != 0 && @ < 1e-100 && @ > -1e-100)))') THEN
    RETURN NULL;
  END IF;
  t := j::text;
  IF octet_length(t) > max_bytes THEN
    RETURN NULL;
  END IF;
  RETURN t;
EXCEPTION WHEN out_of_memory OR program_limit_exceeded OR statement_too_complex THEN
  RETURN NULL;
END
$$;
