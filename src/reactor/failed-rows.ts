// Operator actions on terminal failures, for any lease-queue table: list failed rows
// (keyset-paginated, filterable) and put them back to pending. The table's UPDATE
// trigger then notifies, so reactors pick the rows up at once.
import type { Pool } from "../db/pool.js";
import { type QueueTableSpec, quoteIdent } from "./lease-queue.js";

export interface FailedFilter {
  /** Only these ids. */
  ids?: number[];
  /** last_error contains this text (case-insensitive). */
  errorContains?: string;
  /** Rows created at or after / before these times. */
  createdAfter?: string;
  createdBefore?: string;
  /** Extra equality filters on columns the caller allows (subscription_id, event type…). */
  equals?: Record<string, string | number>;
}

export interface FailedRows {
  list(
    filter: FailedFilter,
    page: { limit: number; afterId?: number },
  ): Promise<{ items: Record<string, unknown>[]; nextAfterId: number | null }>;
  /** How many failed rows match the filter, counting at most `cap` (a bulk retry's confirmation). */
  count(filter: FailedFilter, cap: number): Promise<number>;
  /** Retries one row; 'not_found' or 'not_failed' (with the row's state) say why not. */
  retryOne(id: number): Promise<RetryOneResult>;
  /** Retries every failed row matching the filter, at most `limit`; returns how many. */
  retryMatching(filter: FailedFilter, limit: number): Promise<number>;
}

export type RetryOneResult =
  | { result: "retried" }
  | { result: "not_found" }
  | { result: "not_failed"; state: string };

/**
 * Why a single retry did nothing, in the words the admin API and the CLI both use; null
 * when it was retried. `what` names the rows ("orders", "deliveries").
 */
export function retryOneRefusal(what: string, id: number, r: RetryOneResult): string | null {
  if (r.result === "not_found") return `no ${what} row with id ${id}`;
  if (r.result === "not_failed")
    return `${what} row ${id} is ${r.state}, not failed; only failed rows can be retried`;
  return null;
}

const q = quoteIdent;

export function makeFailedRows(
  pool: Pool,
  spec: QueueTableSpec,
  options: {
    columns: string;
    allowedEquals: Record<string, string>;
    /** bigint columns (besides id) to return as JSON numbers. */
    numberColumns?: string[];
    /** The column created_after/created_before compare (default created_at). */
    createdColumn?: string;
  },
): FailedRows {
  const t = q(spec.table);
  const state = q(spec.stateColumn);
  const failed = `'${spec.states.failed}'`;
  const pending = `'${spec.states.pending}'`;
  const created = `t.${q(options.createdColumn ?? "created_at")}`;

  /** Builds `AND …` conditions, appending their values to `params` ($1, $2, … in order). */
  function where(filter: FailedFilter, params: unknown[]): string {
    const parts: string[] = [];
    const add = (sqlText: string, value: unknown) => {
      params.push(value);
      parts.push(sqlText.replace("?", `$${params.length}`));
    };
    if (filter.ids?.length) add("t.id = ANY (?::bigint[])", filter.ids);
    if (filter.errorContains)
      add("t.last_error ILIKE '%' || ? || '%'", filter.errorContains.replace(/[\\%_]/g, "\\$&"));
    if (filter.createdAfter) add(`${created} >= ?::timestamptz`, filter.createdAfter);
    if (filter.createdBefore) add(`${created} < ?::timestamptz`, filter.createdBefore);
    for (const [key, value] of Object.entries(filter.equals ?? {})) {
      const expr = options.allowedEquals[key];
      if (!expr) throw new Error(`unknown filter ${key}`);
      add(`${expr} = ?`, value);
    }
    return parts.map((p) => ` AND ${p}`).join("");
  }

  const retrySet = `${state} = ${pending}, attempts = 0, next_attempt_at = now(), locked_by = NULL, locked_until = NULL`;

  return {
    async list(filter, page) {
      const params: unknown[] = [];
      const cond = where(filter, params);
      params.push(page.afterId ?? 0, page.limit + 1);
      const { rows } = await pool.query(
        `SELECT ${options.columns} FROM ${t} t ${spec.claimFrom ?? ""}
         WHERE t.${state} = ${failed} ${spec.claimWhere ?? ""} ${cond}
           AND t.id > $${params.length - 1}
         ORDER BY t.id LIMIT $${params.length}`,
        params,
      );
      const items = rows.slice(0, page.limit).map((r) => {
        const row: Record<string, unknown> = { ...r, id: Number(r.id) };
        for (const c of options.numberColumns ?? []) if (row[c] != null) row[c] = Number(row[c]);
        return row;
      });
      const last = items.at(-1);
      return { items, nextAfterId: rows.length > page.limit && last ? Number(last.id) : null };
    },
    async count(filter, cap) {
      const params: unknown[] = [];
      const cond = where(filter, params);
      params.push(cap);
      // Capped, so a million failed rows cost a bounded scan of the failed-rows index.
      const { rows } = await pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM (
           SELECT 1 FROM ${t} t ${spec.claimFrom ?? ""}
           WHERE t.${state} = ${failed} ${spec.claimWhere ?? ""} ${cond}
           LIMIT $${params.length}) c`,
        params,
      );
      return rows[0]?.n ?? 0;
    },
    async retryOne(id) {
      const res = await pool.query(
        `WITH target AS (SELECT id, ${state} AS state FROM ${t} WHERE id = $1),
         updated AS (UPDATE ${t} SET ${retrySet} WHERE id = $1 AND ${state} = ${failed} RETURNING id)
         SELECT (SELECT state FROM target) AS state, (SELECT count(*) FROM updated)::int AS n`,
        [id],
      );
      const row = res.rows[0];
      if (!row?.state) return { result: "not_found" };
      return row.n > 0 ? { result: "retried" } : { result: "not_failed", state: String(row.state) };
    },
    async retryMatching(filter, limit) {
      const params: unknown[] = [];
      const cond = where(filter, params);
      params.push(limit);
      const res = await pool.query(
        `UPDATE ${t} SET ${retrySet} WHERE id IN (
           SELECT t.id FROM ${t} t ${spec.claimFrom ?? ""}
           WHERE t.${state} = ${failed} ${spec.claimWhere ?? ""} ${cond}
           ORDER BY t.id LIMIT $${params.length})`,
        params,
      );
      return res.rowCount ?? 0;
    },
  };
}
