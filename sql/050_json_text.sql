-- Claimed payloads as text, with a bound (docs/architecture.md, invariant 6): a claim
-- must never fail, or pull gigabytes, because of one row. Returns NULL instead of the
-- text when the value is over max_bytes, either as stored (uncompressed jsonb, cheap to
-- know) or as text, or when PostgreSQL cannot build its text at all (a few kilobytes of
-- numbers like 1e131071 expand past the 1 GB limit). Applied by migrate; safe to rerun.
CREATE OR REPLACE FUNCTION reactor_json_text(j jsonb, max_bytes integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
  t text;
BEGIN
  -- Text is never below an eighth of the binary size (an array of small numbers is
  -- about a fifth): over 8 times the limit is over the limit, without converting it.
  IF pg_column_size(j) > 8::bigint * max_bytes THEN
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
