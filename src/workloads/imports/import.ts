// Imports one Custom Store XML document into orders_inbox, all or nothing: every order of
// it in one transaction with the document's import_files row, or none of them and a
// `failed` row saying why. The same bytes (sha256) are never imported twice. An order
// whose order_key exists is updated only when its content changed; the orders_inbox
// trigger then puts it back to pending, so ShipStation receives the change. The INSERT
// fires the usual NOTIFY: the uploads workload takes over at once.
import { createHash } from "node:crypto";
import type { Pool } from "../../db/pool.js";
import { parseCustomStoreXml } from "./custom-store-xml.js";

export type ImportOutcome = "imported" | "duplicate" | "failed";

export interface ImportResult {
  outcome: ImportOutcome;
  fileName: string;
  sha256: string;
  /** The import_files row (this import's, or the earlier one for a duplicate). */
  fileId: number | null;
  orders: { inserted: number; updated: number; unchanged: number };
  /** Why the document was refused (failed), with the line and column or the order and field. */
  error?: string;
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
  ON CONFLICT (order_key) DO UPDATE
    SET order_number = excluded.order_number, status = excluded.status, payload = excluded.payload
    WHERE orders_inbox.status <> 'shipped'
      AND (orders_inbox.order_number, orders_inbox.status, orders_inbox.payload)
          IS DISTINCT FROM (excluded.order_number, excluded.status, excluded.payload)
  RETURNING (xmax = 0) AS inserted`;

const RECORD_SQL = `
  INSERT INTO import_files (file_name, sha256, state, orders, error)
  VALUES ($1, $2, $3, $4, $5)
  ON CONFLICT (sha256) DO NOTHING
  RETURNING id`;

const EARLIER_SQL = "SELECT id FROM import_files WHERE sha256 = $1";

/** SQLSTATE classes that mean the data was refused (a constraint, a value), not a fault. */
const REFUSED_CLASSES = ["22", "23"];

export async function importDocument(
  pool: Pool,
  input: { fileName: string; content: Buffer | string; maxOrders?: number },
): Promise<ImportResult> {
  const bytes = typeof input.content === "string" ? Buffer.from(input.content) : input.content;
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  const base = {
    fileName: input.fileName,
    sha256,
    orders: { inserted: 0, updated: 0, unchanged: 0 },
  };
  const earlier = async () =>
    Number((await pool.query<{ id: string }>(EARLIER_SQL, [sha256])).rows[0]?.id ?? 0) || null;
  const seen = await earlier();
  if (seen) return { ...base, outcome: "duplicate", fileId: seen };

  const fail = async (error: string): Promise<ImportResult> => {
    const { rows } = await pool.query<{ id: string }>(RECORD_SQL, [
      input.fileName,
      sha256,
      "failed",
      0,
      error,
    ]);
    if (!rows[0]) return { ...base, outcome: "duplicate", fileId: await earlier() };
    return { ...base, outcome: "failed", fileId: Number(rows[0].id), error };
  };

  const parsed = parseCustomStoreXml(bytes.toString("utf8"), { maxOrders: input.maxOrders });
  if (!parsed.ok) return fail(parsed.error);

  const client = await pool.connect();
  // A connection whose rollback failed is discarded, not returned to the pool.
  let broken: Error | undefined;
  let refused = "";
  try {
    await client.query("BEGIN");
    const recorded = await client.query<{ id: string }>(RECORD_SQL, [
      input.fileName,
      sha256,
      "imported",
      parsed.orders.length,
      null,
    ]);
    const fileId = recorded.rows[0] ? Number(recorded.rows[0].id) : null;
    if (fileId === null) {
      // Another replica imported the same bytes a moment ago.
      await client.query("ROLLBACK");
      return { ...base, outcome: "duplicate", fileId: await earlier() };
    }
    const rows = parsed.orders.map((o) => ({
      order_key: o.orderKey,
      order_number: o.orderNumber,
      status: o.status,
      payload: o.payload,
    }));
    const { rows: changed } = await client.query<{ inserted: boolean }>(UPSERT_SQL, [
      JSON.stringify(rows),
    ]);
    await client.query("COMMIT");
    const inserted = changed.filter((r) => r.inserted).length;
    const updated = changed.length - inserted;
    return {
      ...base,
      outcome: "imported",
      fileId,
      orders: { inserted, updated, unchanged: parsed.orders.length - changed.length },
    };
  } catch (err) {
    await client.query("ROLLBACK").catch((e: Error) => {
      broken = e;
    });
    const code = (err as { code?: unknown }).code;
    if (typeof code !== "string" || !REFUSED_CLASSES.includes(code.slice(0, 2))) throw err;
    // The database refused an order (an order_key equal to another row's id, say):
    // nothing of the document was written.
    refused = `the database refused the document's orders: ${(err as Error).message}`;
  } finally {
    client.release(broken);
  }
  return fail(refused);
}
