// The lease/claim pattern (docs/architecture.md, invariant 3), written once for every
// workload table: claim = one short UPDATE … FOR UPDATE SKIP LOCKED that stamps
// locked_by/locked_until and counts the attempt; the work happens after it commits;
// finalize = one batched UPDATE guarded by locked_by that skips rows an application
// transaction holds locked (they are finalized on a later try, never waited on); for a
// table with an attempt log, the same statement inserts each recorded row's attempt.
// Table and column names come from code (QueueTableSpec), never from input; every value
// is a bind parameter. Claim and finalize are prepared by name on a direct pool
// (canPrepare); through PgBouncer in transaction mode, where a prepared statement may live
// on another server connection, every statement is unnamed.
import pg from "pg";
import { canPrepare, type Pool, preparedStatementTrouble } from "../db/pool.js";
import { scheduledDelayMs } from "./backoff.js";

/** How a work table spells the shared columns. All work tables have bigint ids. */
export interface QueueTableSpec {
  table: string;
  stateColumn: string;
  states: { pending: string; done: string; failed: string; cancelled?: string };
  /** Column stamped when a row reaches `done` (uploaded_at, delivered_at). */
  doneAtColumn: string;
  /**
   * When a pending row started waiting (updated_at for orders, which a content change
   * moves; created_at for deliveries): the oldest-pending-age figure counts from it, so
   * rows held back by a pause or a rate limit still age.
   */
  pendingSinceColumn: string;
  /**
   * A column the app changes when the row's content changes (updated_at). If it moved
   * while a row was in flight, the row stays pending and is sent again, not lost.
   */
  versionColumn?: string;
  /** Extra per-row values written at finalize (a target's id, the last HTTP status). */
  extraColumns?: ReadonlyArray<{
    name: string;
    type: "bigint" | "integer" | "text";
    keepOld?: boolean;
  }>;
  /** The columns a claim returns besides the payload, as SQL over `t` and claimFrom's tables. */
  returning: string;
  /**
   * The row's large JSON value. A claim measures it before returning it: one larger than
   * maxBytes comes back as null with its size (the workload fails it without loading it),
   * and a claim stops adding rows once their payloads add up to CLAIM_MAX_BYTES.
   * JSON arrives as text, exactly as stored (numbers are not rounded through doubles).
   */
  payload: {
    /** SQL for the value, e.g. `t.payload` or `e.payload`. */
    sql: string;
    /** The join the candidate scan needs to reach it (`JOIN outbox_events e ON …`), if any. */
    join?: string;
    /** Name of the returned column. */
    as: string;
    /** The most a workload sends of it; see ClaimedRow.payload_bytes. */
    maxBytes: number;
  };
  /**
   * Tables the claim reads alongside the row (`, other o`), the join condition
   * (`AND o.id = t.other_id`).
   */
  claimFrom?: string;
  claimWhere?: string;
  /**
   * A bigint column whose values the caller may exclude from a claim (rows of an
   * endpoint that is at its in-flight cap), so they are not claimed only to be handed back.
   */
  excludeColumn?: string;
  /**
   * A table that gets one row per outcome carrying an `attempt`, written by the finalize
   * statement itself (no extra round trip), and only for rows the finalize recorded. Its
   * columns: `key` (this row's id), attempt, started_at, duration_ms, status, error,
   * response_excerpt.
   */
  attemptLog?: { table: string; key: string };
}

/** A claim returns payloads of at most this many bytes in total (and at least one row). */
export const CLAIM_MAX_BYTES = 32 * 1024 * 1024;

/** One try at the target, logged by a queue with an attemptLog. */
export interface AttemptRecord {
  /** The row's attempt number (its `attempts` as claimed). */
  number: number;
  startedAt: Date;
  durationMs: number;
  /** The target's status code, or null when no answer came. */
  status: number | null;
  error: string | null;
  /** The start of the answer's body, at most 1 KiB (the table refuses more). */
  excerpt: string | null;
}

/** What a handler decided for one row, with the try it made, if it made one. */
export type Outcome = (
  | { id: number; kind: "success"; extra?: Record<string, unknown> }
  | { id: number; kind: "retry"; at: Date; error: string; extra?: Record<string, unknown> }
  | { id: number; kind: "failed"; error: string; extra?: Record<string, unknown> }
  /** Final without success or failure (the target is gone); needs states.cancelled. */
  | { id: number; kind: "cancel"; error: string; extra?: Record<string, unknown> }
  /** Give the row back without using an attempt (rate limit, pause), due again at `at`. */
  | { id: number; kind: "defer"; at: Date }
) & { attempt?: AttemptRecord };

/**
 * The outcome of a transient failure, shared by every workload: retry after the
 * schedule's next delay (or after `delayMs` when the target named one), or `failed`
 * once the schedule is exhausted. `row.attempts` already counts this attempt (the claim
 * counts it).
 */
export function retryOrFail(
  row: { id: number; attempts: number },
  scheduleSeconds: readonly number[],
  error: string,
  options: { delayMs?: number | null; extra?: Record<string, unknown> } = {},
): Outcome {
  const attemptsMade = Math.max(1, row.attempts);
  const scheduled = scheduledDelayMs(scheduleSeconds, attemptsMade);
  if (scheduled === null) {
    return {
      id: row.id,
      kind: "failed",
      error: `${error} (gave up after ${attemptsMade} attempts)`,
      extra: options.extra,
    };
  }
  const delay = options.delayMs ?? scheduled;
  return {
    id: row.id,
    kind: "retry",
    at: new Date(Date.now() + delay),
    error,
    extra: options.extra,
  };
}

/** Every claimed row carries these, plus the spec's returning columns and payload. */
export interface ClaimedRow {
  id: number;
  /** Attempts including this one. */
  attempts: number;
  /** Seconds from the row becoming due to this claim. */
  pickup_lag: number;
  /** When this process claimed the row (epoch ms), set by the drainer. */
  claimedAt?: number;
  /** The version column's value at claim time, compared at finalize. */
  claim_version: unknown;
  /**
   * Size in bytes of the payload as stored (uncompressed jsonb). The payload is null when
   * it is over 8 times the limit stored, or over twice the limit as text, or cannot be
   * converted to text at all; the workload applies the exact limit to what it sends.
   */
  payload_bytes: number;
  /**
   * True when the row's previous lease expired (its process crashed or hung) and it had
   * used all its attempts: the claim marked it failed, and it must not be processed.
   */
  abandoned: boolean;
}

export interface QueueStats {
  /** Pending rows, due now or scheduled. */
  backlog: number;
  /** Pending rows due now (not waiting for a retry time), leased or not. */
  due: number;
  /** Pending rows due now that no reactor holds: what a drain should be taking. */
  claimable: number;
  /** Seconds since the oldest pending row started waiting (paused, deferred or due), or 0. */
  oldestPendingAgeSeconds: number;
  /** When the next pending row becomes claimable (due and lease free), or null if none. */
  nextDueAt: Date | null;
}

export interface ClaimOptions {
  limit: number;
  leaseSeconds: number;
  /** A row whose lease expired with this many attempts used is failed instead of handed out. */
  maxAttempts: number;
  exclude?: number[];
}

export interface FinalizeResult {
  /** Rows recorded. */
  done: number[];
  /** Rows still ours but locked by another transaction: finalize them again later. */
  locked: number[];
  /** Rows no longer ours (the lease expired and another reactor took them). */
  lost: number[];
}

export interface LeaseQueue<Row extends ClaimedRow> {
  spec: QueueTableSpec;
  claim(owner: string, options: ClaimOptions): Promise<Row[]>;
  finalize(owner: string, outcomes: Outcome[]): Promise<FinalizeResult>;
  /** Extends the leases of rows still in flight; returns the ids renewed (locked rows are skipped). */
  renew(owner: string, ids: number[], leaseSeconds: number): Promise<number[]>;
  /** Drops claim-time state for rows whose finalize was abandoned (their lease will expire). */
  forget(ids: number[]): void;
  /** Gives back every row this owner still holds (shutdown). Returns how many. */
  release(owner: string): Promise<number>;
  stats(): Promise<QueueStats>;
  /** Rows per state (pending, done, failed…), for /status and the CLI. */
  countsByState(): Promise<Record<string, number>>;
  /** The stats query as a SELECT, so the safety poll can ask every table in one round trip. */
  statsSql(label: string): string;
}

/**
 * Joined into the claim and the finalize: their commits do not wait for the WAL flush
 * (synchronous_commit off for that one transaction; about 0.5 ms of each claim here, on
 * the pickup path). A server crash can forget the last few hundred milliseconds of them,
 * and nothing else: a forgotten claim or finalize leaves the row pending, so it runs
 * again, which is what any crash with work in flight does (at least once). The workloads'
 * own writes (an order marked shipped, an imported file) keep the server's setting.
 */
const ASYNC_COMMIT = "(SELECT set_config('synchronous_commit', 'off', true)) AS async_commit";

/**
 * An attempt log's columns, in the order the finalize binds them: the AttemptRecord
 * field, its array type, its name in the statement (a_…, clear of the table's columns)
 * and in the log table.
 */
const ATTEMPT_FIELDS = [
  { field: "number", type: "integer", v: "a_number", column: "attempt" },
  { field: "startedAt", type: "timestamptz", v: "a_started_at", column: "started_at" },
  { field: "durationMs", type: "integer", v: "a_duration_ms", column: "duration_ms" },
  { field: "status", type: "integer", v: "a_status", column: "status" },
  { field: "error", type: "text", v: "a_error", column: "error" },
  { field: "excerpt", type: "text", v: "a_excerpt", column: "response_excerpt" },
] as const satisfies ReadonlyArray<{ field: keyof AttemptRecord; [k: string]: string }>;

/** Quotes an identifier from a QueueTableSpec (code, never input). */
export const quoteIdent = (ident: string) => `"${ident.replace(/"/g, '""')}"`;
const q = quoteIdent;

const JSON_OID = 114;
const JSONB_OID = 3802;
/** Claimed rows keep json/jsonb as text: the workload parses (or splices) it exactly. */
const rawJsonTypes = {
  getTypeParser: ((oid: number, format?: "text" | "binary") =>
    oid === JSON_OID || oid === JSONB_OID
      ? (value: string) => value
      : pg.types.getTypeParser(oid, format ?? "text")) as typeof pg.types.getTypeParser,
};

export function makeLeaseQueue<Row extends ClaimedRow>(
  pool: Pool,
  spec: QueueTableSpec,
): LeaseQueue<Row> {
  const t = q(spec.table);
  const state = q(spec.stateColumn);
  const pending = `'${spec.states.pending}'`;
  const failed = `'${spec.states.failed}'`;
  const version = spec.versionColumn ? `t.${q(spec.versionColumn)}::text` : "NULL::text";
  const extras = spec.extraColumns ?? [];
  const payload = spec.payload.sql;

  // The partial index (next_attempt_at, id) WHERE state = pending serves the candidate
  // scan. A payload's size is its uncompressed jsonb size (payload || '{}' is a copy:
  // 7 ms for 16 MB, where building its text takes a quarter of a second). The running
  // byte sum stops the claim at CLAIM_MAX_BYTES; locks on candidates beyond it end with
  // the statement. The text is built by reactor_json_text (sql/050_json_text.sql), which
  // returns NULL instead of failing the claim for a payload too large to send or to
  // convert at all.
  const claimSql = `
    WITH cand AS (
      SELECT t.id, t.next_attempt_at, t.attempts,
        greatest(t.next_attempt_at, coalesce(t.locked_until, t.next_attempt_at)) AS due_at,
        (t.locked_by IS NOT NULL AND t.attempts >= $4) AS dead,
        pg_column_size(${payload} || '{}'::jsonb)::bigint AS bytes
      FROM ${t} t ${spec.payload.join ?? ""}
      WHERE t.${state} = ${pending}
        AND t.next_attempt_at <= now()
        AND (t.locked_until IS NULL OR t.locked_until < now())
        ${spec.excludeColumn ? `AND NOT (t.${q(spec.excludeColumn)} = ANY ($7::bigint[]))` : ""}
      ORDER BY t.next_attempt_at, t.id
      LIMIT $3
      FOR UPDATE OF t SKIP LOCKED
    ), picked AS (
      SELECT c.*,
        row_number() OVER w AS rn,
        sum(CASE WHEN c.bytes > 8 * $5::bigint THEN 0 ELSE c.bytes END) OVER w AS running
      FROM cand c
      WINDOW w AS (ORDER BY c.next_attempt_at, c.id)
    )
    UPDATE ${t} AS t SET
      locked_by = CASE WHEN p.dead THEN NULL ELSE $1 END,
      locked_until = CASE WHEN p.dead THEN NULL
        ELSE now() + make_interval(secs => $2::double precision) END,
      attempts = CASE WHEN p.dead THEN t.attempts ELSE t.attempts + 1 END,
      ${state} = CASE WHEN p.dead THEN ${failed} ELSE t.${state} END,
      last_error = CASE WHEN p.dead THEN 'abandoned: attempt ' || t.attempts || ' of '
        || t.attempts || ' did not finish (its lease expired: the process handling it crashed or hung)'
        ELSE t.last_error END
    FROM picked p CROSS JOIN ${ASYNC_COMMIT} ${spec.claimFrom ?? ""}
    WHERE t.id = p.id AND (p.rn = 1 OR p.running <= $6) ${spec.claimWhere ?? ""}
    RETURNING ${spec.returning}, t.attempts, p.bytes AS payload_bytes, p.dead AS abandoned,
      CASE WHEN p.bytes > 8 * $5::bigint THEN NULL
        ELSE reactor_json_text(${payload}, (2 * $5)::integer) END AS ${q(spec.payload.as)},
      ${version} AS claim_version,
      greatest(0, extract(epoch FROM clock_timestamp() - p.due_at))::float8 AS pickup_lag`;

  const changed = spec.versionColumn
    ? `t.${q(spec.versionColumn)}::text IS DISTINCT FROM v.version`
    : "false";
  const extraSet = extras
    .map((c, i) => {
      const col = q(c.name);
      const value = `v.x${i}`;
      return c.keepOld
        ? `, ${col} = coalesce(${value}, t.${col})`
        : `, ${col} = CASE WHEN v.kind = 'defer' THEN t.${col} ELSE ${value} END`;
    })
    .join("");
  const extraUnnest = extras.map((c, i) => `, $${7 + i}::${c.type}[]`).join("");
  const extraNames = extras.map((_, i) => `, x${i}`).join("");
  const log = spec.attemptLog;
  const attemptFirst = 7 + extras.length;
  const attemptUnnest = log
    ? ATTEMPT_FIELDS.map((f, i) => `, $${attemptFirst + i}::${f.type}[]`).join("")
    : "";
  const attemptNames = log ? ATTEMPT_FIELDS.map((f) => `, ${f.v}`).join("") : "";
  // Rows an application transaction holds locked are skipped (SKIP LOCKED), not waited
  // on: one idle app transaction must not stall the queue. The caller tries them again.
  // Each row is locked by its own primary-key probe (the LATERAL), and the UPDATE joins
  // on id alone: statistics taken while nothing is leased say `locked_by = $1` matches
  // one row, and a join filtered on it became a nested loop comparing the whole batch
  // with itself (test/queue-plans.test.ts). Once locked, a row's locked_by cannot change.
  const finalizeHead = `
    WITH v AS (
      SELECT * FROM unnest($2::bigint[], $3::text[], $4::timestamptz[], $5::text[], $6::text[]${extraUnnest}${attemptUnnest})
        AS v(id, kind, at, error, version${extraNames}${attemptNames})
    ), lockable AS (
      SELECT v.* FROM v CROSS JOIN LATERAL (
        SELECT 1 FROM ${t} l WHERE l.id = v.id AND l.locked_by = $1
        FOR UPDATE OF l SKIP LOCKED
      ) k
    )`;
  const finalizeUpdate = `
    UPDATE ${t} AS t SET
      ${state} = CASE
        WHEN v.kind IN ('retry', 'defer') OR ${changed} THEN ${pending}
        WHEN v.kind = 'success' THEN '${spec.states.done}'
        WHEN v.kind = 'cancel' THEN '${spec.states.cancelled ?? spec.states.failed}'
        ELSE ${failed} END,
      attempts = greatest(0, t.attempts - CASE WHEN v.kind = 'defer' THEN 1 ELSE 0 END),
      next_attempt_at = CASE
        WHEN v.kind IN ('retry', 'defer') THEN v.at
        WHEN ${changed} THEN now()
        ELSE t.next_attempt_at END,
      last_error = CASE WHEN v.kind = 'success' THEN NULL WHEN v.kind = 'defer' THEN t.last_error ELSE v.error END,
      ${q(spec.doneAtColumn)} = CASE WHEN v.kind = 'success' THEN now() ELSE t.${q(spec.doneAtColumn)} END,
      locked_by = NULL,
      locked_until = NULL
      ${extraSet}
    FROM lockable v CROSS JOIN ${ASYNC_COMMIT}
    WHERE t.id = v.id
    RETURNING t.id`;
  // With an attempt log, the UPDATE hands each recorded row's attempt on through its
  // RETURNING (columns of its FROM item), and the INSERT reads that alone: joining the
  // updated ids back to the unnest would be the batch-with-itself join again. Rows the
  // finalize did not record (locked, no longer ours) log nothing; a locked one logs its
  // attempt when it is recorded later.
  const finalizeSql = log
    ? `${finalizeHead}, upd AS (${finalizeUpdate}${ATTEMPT_FIELDS.map((f) => `, v.${f.v}`).join("")}
    ), ins AS (
      INSERT INTO ${q(log.table)} (${q(log.key)}${ATTEMPT_FIELDS.map((f) => `, ${q(f.column)}`).join("")})
      SELECT id${ATTEMPT_FIELDS.map((f) => `, ${f.v}`).join("")} FROM upd WHERE a_started_at IS NOT NULL
    )
    SELECT id FROM upd`
    : `${finalizeHead}${finalizeUpdate}`;

  /** Which of the given rows this owner still holds (a plain read: never waits on a lock). */
  const heldSql = `SELECT id FROM ${t} WHERE id = ANY ($2::bigint[]) AND locked_by = $1`;

  const renewSql = `
    UPDATE ${t} AS t SET locked_until = now() + make_interval(secs => $3::double precision)
    FROM (SELECT id FROM ${t} WHERE id = ANY ($2::bigint[]) AND locked_by = $1
          FOR UPDATE SKIP LOCKED) l
    WHERE t.id = l.id
    RETURNING t.id`;

  // Rows an app holds locked are left to their lease, never waited on.
  const releaseSql = `UPDATE ${t} AS t SET locked_by = NULL, locked_until = NULL
    FROM (SELECT id FROM ${t} WHERE locked_by = $1 AND ${state} = ${pending}
          FOR UPDATE SKIP LOCKED) l
    WHERE t.id = l.id`;

  const statsSql = (label: string) => `
    SELECT '${label}'::text AS workload,
      count(*)::int AS backlog,
      (count(*) FILTER (WHERE next_attempt_at <= now()))::int AS due,
      (count(*) FILTER (WHERE next_attempt_at <= now()
        AND (locked_until IS NULL OR locked_until < now())))::int AS claimable,
      coalesce(extract(epoch FROM now() - min(${q(spec.pendingSinceColumn)})), 0)::float8
        AS oldest_pending_age,
      min(greatest(next_attempt_at, coalesce(locked_until, next_attempt_at))) AS next_due_at
    FROM ${t} WHERE ${state} = ${pending}`;

  // Claim-time versions of rows in flight, as text so timestamps keep their microseconds.
  const versions = new Map<number, string | null>();
  const ids = (rows: Array<{ id: string | number }>) => rows.map((r) => Number(r.id));

  return {
    spec,
    async claim(owner, options) {
      const params: unknown[] = [
        owner,
        options.leaseSeconds,
        options.limit,
        options.maxAttempts,
        spec.payload.maxBytes,
        CLAIM_MAX_BYTES,
        ...(spec.excludeColumn ? [options.exclude ?? []] : []),
      ];
      const named = canPrepare(pool);
      const { rows } = await pool
        .query<Row>({
          ...(named ? { name: `pgr_claim_${spec.table}` } : {}),
          text: claimSql,
          values: params,
          types: rawJsonTypes,
        })
        .catch((err: unknown) => {
          throw preparedStatementTrouble(pool, err, named) ?? err;
        });
      for (const row of rows) {
        // bigint arrives as a string; ids stay far below 2^53.
        row.id = Number(row.id);
        row.payload_bytes = Number(row.payload_bytes);
        if (!row.abandoned)
          versions.set(row.id, row.claim_version == null ? null : String(row.claim_version));
      }
      return rows;
    },
    async finalize(owner, outcomes) {
      if (outcomes.length === 0) return { done: [], locked: [], lost: [] };
      const all = outcomes.map((o) => o.id);
      const params: unknown[] = [
        owner,
        all,
        outcomes.map((o) => o.kind),
        outcomes.map((o) => ("at" in o ? o.at : null)),
        outcomes.map((o) => ("error" in o ? o.error : null)),
        outcomes.map((o) => versions.get(o.id) ?? null),
        ...extras.map((c) =>
          outcomes.map((o) => ("extra" in o ? (o.extra?.[c.name] ?? null) : null)),
        ),
        ...(spec.attemptLog
          ? ATTEMPT_FIELDS.map((f) => outcomes.map((o) => (o.attempt ? o.attempt[f.field] : null)))
          : []),
      ];
      const named = canPrepare(pool);
      const res = await pool
        .query<{ id: string }>({
          ...(named ? { name: `pgr_finalize_${spec.table}` } : {}),
          text: finalizeSql,
          values: params,
        })
        .catch((err: unknown) => {
          throw preparedStatementTrouble(pool, err, named) ?? err;
        });
      const done = ids(res.rows);
      for (const id of done) versions.delete(id);
      if (done.length === all.length) return { done, locked: [], lost: [] };
      const finished = new Set(done);
      const rest = all.filter((id) => !finished.has(id));
      const held = new Set(ids((await pool.query<{ id: string }>(heldSql, [owner, rest])).rows));
      const lost = rest.filter((id) => !held.has(id));
      for (const id of lost) versions.delete(id);
      return { done, locked: rest.filter((id) => held.has(id)), lost };
    },
    async renew(owner, rowIds, leaseSeconds) {
      if (rowIds.length === 0) return [];
      const res = await pool.query<{ id: string }>(renewSql, [owner, rowIds, leaseSeconds]);
      return ids(res.rows);
    },
    forget(rowIds) {
      for (const id of rowIds) versions.delete(id);
    },
    async release(owner) {
      const res = await pool.query(releaseSql, [owner]);
      versions.clear();
      return res.rowCount ?? 0;
    },
    async stats() {
      const { rows } = await pool.query(statsSql("x"));
      return toStats(rows[0]);
    },
    statsSql,
    async countsByState() {
      const { rows } = await pool.query<{ state: string; n: number }>(
        `SELECT ${state} AS state, count(*)::int AS n FROM ${t} GROUP BY 1`,
      );
      return Object.fromEntries(rows.map((r) => [r.state, r.n]));
    },
  };
}

/** Converts one row of a statsSql() result. */
export function toStats(row: Record<string, unknown> | undefined): QueueStats {
  return {
    backlog: Number(row?.backlog ?? 0),
    due: Number(row?.due ?? 0),
    claimable: Number(row?.claimable ?? 0),
    oldestPendingAgeSeconds: Number(row?.oldest_pending_age ?? 0),
    nextDueAt: row?.next_due_at ? new Date(row.next_due_at as string) : null,
  };
}
