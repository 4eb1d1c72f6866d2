// Importing a Custom Store XML document into orders_inbox: all or nothing, once per
// content, and the uploads workload takes the orders at once. The folder watch, the
// admin route and the CLI that feed importDocument are in import-folder.test.ts.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { importDocument } from "../src/workloads/imports/import.js";
import { createTestDatabase, type TestDatabase, waitFor } from "./helpers/db.js";
import { startReactor } from "./helpers/reactor.js";
import { doc, order } from "./helpers/xml.js";

describe("importDocument", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  let app: App;

  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
    app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url });
  });
  afterAll(async () => {
    await app.stop(2_000);
    await fake.close();
    await db.drop();
  });

  const count = async (sql: string, params: unknown[] = []) =>
    Number((await db.pool.query(sql, params)).rows[0].n);

  it("a document of 3 orders is 3 rows, uploaded at once; the same bytes again are a duplicate", async () => {
    const xml = doc(order("a1"), order("a2"), order("a3"));
    const first = await importDocument(db.pool, { fileName: "three.xml", content: xml });
    expect(first).toMatchObject({
      outcome: "imported",
      orders: { inserted: 3, updated: 0, unchanged: 0 },
    });
    await waitFor(() => ["a1", "a2", "a3"].every((k) => fake.received.get(k) === 1), {
      what: "3 orders at ShipStation",
    });
    const again = await importDocument(db.pool, { fileName: "three-copy.xml", content: xml });
    expect(again).toMatchObject({ outcome: "duplicate", fileId: first.fileId });
    expect(await count("SELECT count(*) AS n FROM orders_inbox WHERE order_key LIKE 'a%'")).toBe(3);
    const { rows } = await db.pool.query(
      "SELECT file_name, state, orders FROM import_files ORDER BY id",
    );
    expect(rows).toEqual([{ file_name: "three.xml", state: "imported", orders: 3 }]);
  });

  it("a changed order in a new document is updated and uploaded again; an unchanged one is left alone", async () => {
    await importDocument(db.pool, { fileName: "b.xml", content: doc(order("b1"), order("b2")) });
    await waitFor(() => fake.received.get("b1") === 1 && fake.received.get("b2") === 1, {
      what: "b1 and b2 uploaded",
    });
    const next = await importDocument(db.pool, {
      fileName: "b-changed.xml",
      content: doc(order("b1", { total: "12.50" }), order("b2")),
    });
    expect(next).toMatchObject({
      outcome: "imported",
      orders: { inserted: 0, updated: 1, unchanged: 1 },
    });
    await waitFor(() => fake.received.get("b1") === 2, { what: "b1 uploaded again" });
    expect(fake.received.get("b2")).toBe(1);
  });

  it("a document with one invalid order writes nothing and records why", async () => {
    const bad = doc(order("c1"), order("c2").replace("11/23/2026 14:05", "2026-11-23"));
    const result = await importDocument(db.pool, { fileName: "bad.xml", content: bad });
    expect(result.outcome).toBe("failed");
    expect(result.error).toMatch(
      /Order 2 \(OrderNumber N-c2\): OrderDate must be MM\/dd\/yyyy HH:mm/,
    );
    expect(await count("SELECT count(*) AS n FROM orders_inbox WHERE order_key LIKE 'c%'")).toBe(0);
    const malformed = await importDocument(db.pool, {
      fileName: "cut.xml",
      content: "<Orders><Order>",
    });
    expect(malformed.error).toMatch(/not well-formed XML at line 1, column \d+/);
    const { rows } = await db.pool.query(
      "SELECT file_name, state, error FROM import_files WHERE state = 'failed' ORDER BY id",
    );
    expect(rows.map((r) => r.file_name)).toEqual(["bad.xml", "cut.xml"]);
  });

  it("an order the database refuses (its key is another row's id) fails the whole document", async () => {
    // A row without order_key uploads under its id: an imported OrderID equal to that id
    // would merge two orders in ShipStation.
    const { rows } = await db.pool.query(
      `INSERT INTO orders_inbox (order_number, payload, upload_state) VALUES ('keyless', '{}', 'uploaded')
       RETURNING id`,
    );
    const takenId = String(rows[0].id);
    const result = await importDocument(db.pool, {
      fileName: "clash.xml",
      content: doc(order("d1"), order(takenId)),
    });
    expect(result.outcome).toBe("failed");
    expect(result.error).toMatch(/order_key_must_differ_from_other_orders_keys_and_ids/);
    expect(await count("SELECT count(*) AS n FROM orders_inbox WHERE order_key = 'd1'")).toBe(0);

    // The same bytes are tried again (not a duplicate of a failure): once the clash is
    // gone, they import, and the import_files row says so.
    await db.pool.query("DELETE FROM orders_inbox WHERE id = $1", [rows[0].id]);
    const again = await importDocument(db.pool, {
      fileName: "clash-again.xml",
      content: doc(order("d1"), order(takenId)),
    });
    expect(again).toMatchObject({ outcome: "imported", fileId: result.fileId });
    const recorded = await db.pool.query(
      "SELECT file_name, state, error FROM import_files WHERE id = $1",
      [result.fileId],
    );
    expect(recorded.rows).toEqual([
      { file_name: "clash-again.xml", state: "imported", error: null },
    ]);
  });
});
