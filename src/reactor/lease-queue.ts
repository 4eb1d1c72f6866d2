// The lease/claim pattern of DESIGN.md §3.3, written once for every workload table:
// claim = one short UPDATE … FOR UPDATE SKIP LOCKED that stamps locked_by/locked_until;
// the work happens after it commits; finalize = one batched UPDATE guarded by locked_by.
// Table and column names come from code (QueueTableSpec), never from input; every value
// is a bind parameter.
import type { Pool } from "../db/pool.js";
import { scheduledDelayMs } from "./backoff.js";

/** How a work table spells the shared columns. All work tables have bigint ids. */
export interface QueueTableSpec {
  table: string;
  stateColumn: string;
  states: { pending: string; done: string; failed: string; cancelled?: string };
  /** Column stamped when a row reaches `done` (uploaded_at, delivered_at). */
  doneAtColumn: string;
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
  /**
   * Tables the claim reads alongside the row (`, other o`), the join condition
   * (`AND o.id = t.other_id`) and the columns it adds to each claimed row.
   */
  claimFrom?: string;
  claimWhere?: string;
  claimColumns?: string;
  /**
   * A bigint column whose values the caller may exclude from a claim (rows of an
   * endpoint that is at its in-flight cap), so they are not claimed only to be handed back.
   */
  excludeColumn?: string;
}

/** What a handler decided for one row. */
export type Outcome =
  | { id: number; kind: "success"; extra?: Record<string, unknown> }
  | { id: number; kind: "retry"; at: Date; error: string; extra?: Record<string, unknown> }
  | { id: number; kind: "failed"; error: string; extra?: Record<string, unknown> }
  /** Final without success or failure (the target is gone); needs states.cancelled. */
  | { id: number; kind: "cancel"; error: string; extra?: Record<string, unknown> }
  /** Give the row back without using an attempt (rate limit, pause), due again at `at`. */
  | { id: number; kind: "defer"; at: Date };

/**
 * The outcome of a transient failure, shared by every workload: retry after the
 * schedule's next delay (or after `delayMs` when the target named one), or `failed`
 * once the schedule is exhausted.
 */
export function retryOrFail(
  row: { id: number; attempts: number },
  scheduleSeconds: readonly number[],
  error: string,
  options: { delayMs?: number | null; extra?: Record<string, unknown> } = {},
): Outcome {
  const attemptsMade = row.attempts + 1;
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

/** Every claimed row carries these, plus the table's own columns. */
export interface ClaimedRow {
  id: number;
  attempts: number;
  /** Seconds from the row becoming due to this claim. */
  pickup_lag: number;
  /** The version column's value at claim time, compared at finalize. */
  claim_version: unknown;
}

export interface QueueStats {
  /** Pending rows, due now or scheduled. */
  backlog: number;
  /** Pending rows due now (not waiting for a retry time). */
  due: number;
  /** Age in seconds of the oldest row that is due now and not leased, or 0. */
  oldestDueAgeSeconds: number;
  /** When the next pending row becomes claimable (due and lease free), or null if none. */
  nextDueAt: Date | null;
}

export interface LeaseQueue<Row extends ClaimedRow> {
  spec: QueueTableSpec;
  claim(owner: string, limit: number, leaseSeconds: number, exclude?: number[]): Promise<Row[]>;
  finalize(owner: string, outcomes: Outcome[]): Promise<number>;
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

/** Quotes an identifier from a QueueTableSpec (code, never input). */
export const quoteIdent = (ident: string) => `"${ident.replace(/"/g, '""')}"`;
const q = quoteIdent;

export function makeLeaseQueue<Row extends ClaimedRow>(
  pool: Pool,
  spec: QueueTableSpec,
): LeaseQueue<Row> {
  const t = q(spec.table);
  const state = q(spec.stateColumn);
  const pending = `'${spec.states.pending}'`;
  const version = spec.versionColumn ? `t.${q(spec.versionColumn)}::text` : "NULL::text";
  const extras = spec.extraColumns ?? [];

  // The partial index (next_attempt_at, id) WHERE state = pending serves this ORDER BY.
  const claimSql = `
    UPDATE ${t} AS t
    SET locked_by = $1, locked_until = now() + make_interval(secs => $2::double precision)
    FROM (
      SELECT id, greatest(next_attempt_at, coalesce(locked_until, next_attempt_at)) AS due_at
      FROM ${t}
      WHERE ${state} = ${pending}
        AND next_attempt_at <= now()
        AND (locked_until IS NULL OR locked_until < now())
        ${spec.excludeColumn ? `AND NOT (${q(spec.excludeColumn)} = ANY ($4::bigint[]))` : ""}
      ORDER BY next_attempt_at, id
      LIMIT $3
      FOR UPDATE SKIP LOCKED
    ) AS due ${spec.claimFrom ?? ""}
    WHERE t.id = due.id ${spec.claimWhere ?? ""}
    RETURNING t.*, ${version} AS claim_version,
      greatest(0, extract(epoch FROM clock_timestamp() - due.due_at))::float8 AS pickup_lag
      ${spec.claimColumns ? `, ${spec.claimColumns}` : ""}`;

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
  const finalizeSql = `
    UPDATE ${t} AS t SET
      ${state} = CASE
        WHEN v.kind IN ('retry', 'defer') OR ${changed} THEN ${pending}
        WHEN v.kind = 'success' THEN '${spec.states.done}'
        WHEN v.kind = 'cancel' THEN '${spec.states.cancelled ?? spec.states.failed}'
        ELSE '${spec.states.failed}' END,
      attempts = t.attempts + CASE WHEN v.kind = 'defer' THEN 0 ELSE 1 END,
      next_attempt_at = CASE
        WHEN v.kind IN ('retry', 'defer') THEN v.at
        WHEN ${changed} THEN now()
        ELSE t.next_attempt_at END,
      last_error = CASE WHEN v.kind = 'success' THEN NULL WHEN v.kind = 'defer' THEN t.last_error ELSE v.error END,
      ${q(spec.doneAtColumn)} = CASE WHEN v.kind = 'success' THEN now() ELSE t.${q(spec.doneAtColumn)} END,
      locked_by = NULL,
      locked_until = NULL
      ${extraSet}
    FROM unnest($2::bigint[], $3::text[], $4::timestamptz[], $5::text[], $6::text[]${extraUnnest})
      AS v(id, kind, at, error, version${extraNames})
    WHERE t.id = v.id AND t.locked_by = $1`;

  const releaseSql = `UPDATE ${t} SET locked_by = NULL, locked_until = NULL
    WHERE locked_by = $1 AND ${state} = ${pending}`;

  const statsSql = (label: string) => `
    SELECT '${label}'::text AS workload,
      count(*)::int AS backlog,
      (count(*) FILTER (WHERE next_attempt_at <= now()))::int AS due,
      coalesce(extract(epoch FROM now() - min(next_attempt_at)
        FILTER (WHERE next_attempt_at <= now() AND (locked_until IS NULL OR locked_until < now()))), 0)::float8
        AS oldest_due_age,
      min(greatest(next_attempt_at, coalesce(locked_until, next_attempt_at))) AS next_due_at
    FROM ${t} WHERE ${state} = ${pending}`;

  // Claim-time versions of rows in flight, as text so timestamps keep their microseconds.
  const versions = new Map<number, string | null>();

  return {
    spec,
    async claim(owner, limit, leaseSeconds, exclude = []) {
      const params = [owner, leaseSeconds, limit, ...(spec.excludeColumn ? [exclude] : [])];
      // Named (prepared) statements: parsed and planned once per connection.
      const { rows } = await pool.query<Row>({
        name: `reactor_claim_${spec.table}`,
        text: claimSql,
        values: params,
      });
      for (const row of rows) {
        // bigint arrives as a string; ids stay far below 2^53.
        row.id = Number(row.id);
        versions.set(row.id, row.claim_version == null ? null : String(row.claim_version));
      }
      return rows;
    },
    async finalize(owner, outcomes) {
      if (outcomes.length === 0) return 0;
      const params: unknown[] = [
        owner,
        outcomes.map((o) => o.id),
        outcomes.map((o) => o.kind),
        outcomes.map((o) => ("at" in o ? o.at : null)),
        outcomes.map((o) => ("error" in o ? o.error : null)),
        outcomes.map((o) => versions.get(o.id) ?? null),
        ...extras.map((c) =>
          outcomes.map((o) => ("extra" in o ? (o.extra?.[c.name] ?? null) : null)),
        ),
      ];
      const res = await pool.query({
        name: `reactor_finalize_${spec.table}`,
        text: finalizeSql,
        values: params,
      });
      for (const o of outcomes) versions.delete(o.id);
      return res.rowCount ?? 0;
    },
    forget(ids) {
      for (const id of ids) versions.delete(id);
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
    oldestDueAgeSeconds: Number(row?.oldest_due_age ?? 0),
    nextDueAt: row?.next_due_at ? new Date(row.next_due_at as string) : null,
  };
}
