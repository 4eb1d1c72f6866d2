// Imports one Custom Store XML document into orders_inbox, all or nothing: every order of
// it in one transaction with the document's import_files row, or none of them and a
// `failed` row saying why. The same bytes (sha256) are never imported twice; bytes that
// failed before are tried again (a clash with an existing row may have been fixed). An order
// whose order_key exists is updated only when its content changed; the orders_inbox
// trigger then puts it back to pending, so ShipStation receives the change. The INSERT
// fires the usual NOTIFY: the uploads workload takes over at once.
import { createHash } from "node:crypto";
import type { Pool } from "../../db/pool.js";
import { readDocument } from "./parse.js";

export type ImportOutcome = "imported" | "duplicate" | "failed";

/** A document (a file, a request body) larger than this is refused unread. */
export const MAX_DOCUMENT_BYTES = 50 * 1024 * 1024;

export interface ImportResult {
  outcome: ImportOutcome;
  fileName: string;
  sha256: string;
  /** The import_files row (this import's, or the earlier one for a duplicate). */
  fileId: number | null;
  orders: { inserted: number; updated: number; unchanged: number };
  /** Why the document was refused (failed), with the line and column or the order and field. */
  error?: string;
  /** Where in the document it went wrong, for XML that is not well-formed. */
  line?: number;
  column?: number;
  /** For a duplicate: the earlier import of the same bytes. */
  duplicateOf?: { fileName: string; importedAt: Date };
}

/**
 * One statement for every order of the document: new keys are inserted, existing keys
 * updated only when number, status or payload differ (and never once ShipStation shipped
 * them: an import does not un-ship an order). `inserted` tells the two apart.
 */
const UPSERT_SQL = `
  INSERT INTO orders_inbox (order_key, order_number, status, payload)
  SELECT x.order_key, x.order_number, x.status, x.payload
  FROM jsonb_to_recordset($1::jsonb) AS x(order_key text, order_number text, status text, payload jsonb)
  -- Rows are locked in key order: two documents sharing keys wait, never deadlock.
  ORDER BY x.order_key
  ON CONFLICT (order_key) DO UPDATE
    SET order_number = excluded.order_number, status = excluded.status, payload = excluded.payload
    WHERE orders_inbox.status <> 'shipped'
      AND (orders_inbox.order_number, orders_inbox.status, orders_inbox.payload)
          IS DISTINCT FROM (excluded.order_number, excluded.status, excluded.payload)
  RETURNING (xmax = 0) AS inserted`;

/** Records the document; an earlier failure of the same bytes is overwritten, an import is not. */
const RECORD_SQL = `
  INSERT INTO import_files (file_name, sha256, state, orders, error)
  VALUES ($1, $2, $3, $4, $5)
  ON CONFLICT (sha256) DO UPDATE
    SET file_name = excluded.file_name, state = excluded.state, orders = excluded.orders,
        error = excluded.error, imported_at = now()
    WHERE import_files.state = 'failed'
  RETURNING id`;

const EARLIER_SQL = `
  SELECT id, file_name, imported_at FROM import_files WHERE sha256 = $1 AND state = 'imported'`;

/**
 * SQLSTATE classes that mean the data was refused, not a fault: a value (22), a
 * constraint (23), a limit such as an index row too large (54).
 */
const REFUSED_CLASSES = ["22", "23", "54"];
/** Deadlock or serialization failure (another writer of orders_inbox): the import is run again. */
const RETRIED_CODES = ["40P01", "40001"];
/** The unique constraint on orders_inbox.upload_key (drizzle/0003_field_readiness.sql). */
const UPLOAD_KEY_CONSTRAINT = "order_key_must_differ_from_other_orders_keys_and_ids";
const MAX_TRIES = 3;

/** PostgreSQL cannot store U+0000 in text: shown escaped, so a refusal is always recorded. */
export const printable = (message: string) => message.replaceAll("\u0000", "\\u0000");

async function findImported(pool: Pool, base: Base): Promise<ImportResult | null> {
  const { rows } = await pool.query<{ id: string; file_name: string; imported_at: Date }>(
    EARLIER_SQL,
    [base.sha256],
  );
  const row = rows[0];
  if (!row) return null;
  return {
    ...base,
    outcome: "duplicate",
    fileId: Number(row.id),
    duplicateOf: { fileName: row.file_name, importedAt: row.imported_at },
  };
}

type Base = Pick<ImportResult, "fileName" | "sha256" | "orders">;

const noOrders = () => ({ inserted: 0, updated: 0, unchanged: 0 });

/**
 * Records a refused document as `failed` with why (the folder watch refuses a file too
 * large to read this way). Bytes imported before stay a duplicate.
 */
export async function recordRefusal(
  pool: Pool,
  input: { fileName: string; sha256: string; error: string; line?: number; column?: number },
): Promise<ImportResult> {
  const base: Base = { fileName: input.fileName, sha256: input.sha256, orders: noOrders() };
  const error = printable(input.error);
  const { rows } = await pool.query<{ id: string }>(RECORD_SQL, [
    input.fileName,
    input.sha256,
    "failed",
    0,
    error,
  ]);
  // No row: the same bytes were imported (perhaps by another replica a moment ago).
  if (!rows[0])
    return (await findImported(pool, base)) ?? { ...base, outcome: "duplicate", fileId: null };
  const where = {
    ...(input.line !== undefined ? { line: input.line } : {}),
    ...(input.column !== undefined ? { column: input.column } : {}),
  };
  return { ...base, outcome: "failed", fileId: Number(rows[0].id), error, ...where };
}

export async function importDocument(
  pool: Pool,
  input: { fileName: string; content: Buffer | string; maxOrders?: number },
): Promise<ImportResult> {
  const bytes = typeof input.content === "string" ? Buffer.from(input.content) : input.content;
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  const base: Base = { fileName: input.fileName, sha256, orders: noOrders() };
  const duplicate = () => findImported(pool, base);
  const seen = await duplicate();
  if (seen) return seen;
  const fail = (error: string, where: { line?: number; column?: number } = {}) =>
    recordRefusal(pool, { fileName: input.fileName, sha256, error, ...where });

  if (bytes.length > MAX_DOCUMENT_BYTES) {
    return fail(
      `the document is ${bytes.length} bytes; at most ${MAX_DOCUMENT_BYTES} are imported from one document (split it)`,
    );
  }
  const prepared = await readDocument({ bytes, maxOrders: input.maxOrders });
  if (!prepared.ok) return fail(prepared.error, { line: prepared.line, column: prepared.column });
  for (let attempt = 1; ; attempt++) {
    const written = await write(pool, base, prepared.rows, prepared.count);
    if (written.kind === "done") return written.result;
    if (written.kind === "refused" && !(written.raced && attempt < MAX_TRIES)) {
      return fail(written.error);
    }
    if (written.kind === "retry" && attempt >= MAX_TRIES) throw written.err;
  }
}

type Written =
  | { kind: "done"; result: ImportResult }
  /**
   * `raced`: the unique upload_key refused a key another transaction inserted at the same
   * moment (ON CONFLICT arbitrates on order_key alone). Run again, the row is there and the
   * upsert updates it; a key that truly equals another order's id is refused again.
   */
  | { kind: "refused"; error: string; raced: boolean }
  | { kind: "retry"; err: unknown };

/** One transaction: the import_files row and every order, or nothing. */
async function write(pool: Pool, base: Base, rows: string, count: number): Promise<Written> {
  const client = await pool.connect();
  // A connection whose rollback failed is discarded, not returned to the pool.
  let broken: Error | undefined;
  try {
    await client.query("BEGIN");
    const recorded = await client.query<{ id: string }>(RECORD_SQL, [
      base.fileName,
      base.sha256,
      "imported",
      count,
      null,
    ]);
    const fileId = recorded.rows[0] ? Number(recorded.rows[0].id) : null;
    if (fileId === null) {
      // Another replica imported the same bytes a moment ago.
      await client.query("ROLLBACK");
      const earlier = await findImported(pool, base);
      return { kind: "done", result: earlier ?? { ...base, outcome: "duplicate", fileId: null } };
    }
    const { rows: changed } = await client.query<{ inserted: boolean }>(UPSERT_SQL, [rows]);
    await client.query("COMMIT");
    const inserted = changed.filter((r) => r.inserted).length;
    const updated = changed.length - inserted;
    return {
      kind: "done",
      result: {
        ...base,
        outcome: "imported",
        fileId,
        orders: { inserted, updated, unchanged: count - changed.length },
      },
    };
  } catch (err) {
    await client.query("ROLLBACK").catch((e: Error) => {
      broken = e;
    });
    const code = (err as { code?: unknown }).code;
    if (typeof code === "string" && RETRIED_CODES.includes(code)) return { kind: "retry", err };
    if (typeof code !== "string" || !REFUSED_CLASSES.includes(code.slice(0, 2))) throw err;
    // The database refused an order (an order_key equal to another row's id, say):
    // nothing of the document was written. The detail names the key.
    const detail = (err as { detail?: unknown }).detail;
    const why = `${(err as Error).message}${typeof detail === "string" ? ` (${detail})` : ""}`;
    const constraint = (err as { constraint?: unknown }).constraint;
    return {
      kind: "refused",
      error: `the database refused the document's orders: ${why}`,
      raced: code === "23505" && constraint === UPLOAD_KEY_CONSTRAINT,
    };
  } finally {
    client.release(broken);
  }
}
