// XML order files as a producer drops them: into IMPORT_DIR of a running reactor (file
// events, the rescan, replicas sharing the folder), through POST /admin/imports, and
// through `pg-reactor import`. Orders reach the fake ShipStation; files end in
// processed/ or failed/ with an error file; import_files and the metric agree.
import { execFileSync } from "node:child_process";
import {
  appendFile,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rename,
  rm,
  symlink,
  truncate,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { buildStatusServer } from "../src/http/server.js";
import { makeLogger } from "../src/logger.js";
import { makeFolderImporter } from "../src/workloads/imports/folder.js";
import type { ImportOutcome } from "../src/workloads/imports/import.js";
import { createTestDatabase, type TestDatabase, waitFor } from "./helpers/db.js";
import { spawnEntry } from "./helpers/process.js";
import { startReplicas } from "./helpers/reactor.js";
import { doc, order } from "./helpers/xml.js";

const ADMIN_TOKEN = "import-admin-token-0123456789";

describe("XML order import", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  let dir: string;
  let apps: App[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
  });
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "pg-reactor-import-"));
  });
  afterEach(async () => {
    await Promise.all(apps.map((a) => a.stop(2_000)));
    apps = [];
    await rm(dir, { recursive: true, force: true });
    await db.pool.query(
      "TRUNCATE orders_inbox, import_files, reactor_rate_limits, configuration_params",
    );
    fake.received.clear();
    fake.calls.length = 0;
  });
  afterAll(async () => {
    await fake.close();
    await db.drop();
  });

  async function start(env: Record<string, string> = {}) {
    const [app] = await startReplicas(1, {
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      env: { IMPORT_DIR: dir, ADMIN_TOKEN, ...env },
    });
    apps.push(app as App);
    return app as App;
  }

  const list = async (sub = "") => (await readdir(path.join(dir, sub))).sort();
  const files = async () =>
    (await db.pool.query("SELECT file_name, state, orders, error FROM import_files ORDER BY id"))
      .rows;
  const orderCount = async () =>
    Number((await db.pool.query("SELECT count(*) AS n FROM orders_inbox")).rows[0].n);
  const outcomes = async (app: App) => {
    const metric = app.metrics.registry.getSingleMetric("reactor_import_files_total");
    const values = (await metric?.get())?.values ?? [];
    return Object.fromEntries(values.map((v) => [v.labels.outcome, v.value])) as Record<
      ImportOutcome,
      number
    >;
  };
  const processed = (name: string) => async () => (await list("processed")).includes(name);

  it("a file of 3 orders dropped in the folder is 3 orders at ShipStation, and moves to processed/", async () => {
    const app = await start();
    await writeFile(path.join(dir, "three.xml"), doc(order("a1"), order("a2"), order("a3")));
    await waitFor(() => ["a1", "a2", "a3"].every((k) => fake.received.get(k) === 1), {
      what: "3 orders at ShipStation",
    });
    await waitFor(processed("three.xml"), { what: "three.xml in processed/" });
    expect(await list()).toEqual(["failed", "processed"]);
    expect(await files()).toEqual([
      { file_name: "three.xml", state: "imported", orders: 3, error: null },
    ]);
    expect(await outcomes(app)).toEqual({ imported: 1, duplicate: 0, failed: 0 });

    // The same bytes under another name: a duplicate, no new rows, moved all the same.
    await writeFile(path.join(dir, "three-again.xml"), doc(order("a1"), order("a2"), order("a3")));
    await waitFor(processed("three-again.xml"), { what: "three-again.xml in processed/" });
    expect(await orderCount()).toBe(3);
    expect(await outcomes(app)).toEqual({ imported: 1, duplicate: 1, failed: 0 });

    // A name used before does not overwrite the earlier file in processed/.
    await writeFile(path.join(dir, "three.xml"), doc(order("a1", { total: "11.00" })));
    await waitFor(() => fake.received.get("a1") === 2, { what: "a1 changed, uploaded again" });
    await waitFor(async () => (await list("processed")).length === 3, {
      what: "three.xml kept twice",
    });
    expect(fake.received.get("a2")).toBe(1);
    const [, renamed] = await list("processed");
    expect(renamed).toMatch(/^three\.\d{8}T\d{6}Z\.xml$/);
  });

  it("malformed XML, a missing field and a bad date: each file in failed/ with an error file, no rows", async () => {
    const app = await start();
    const noName = order("b2").replace("<BillTo><Name>Ada</Name></BillTo>", "<BillTo></BillTo>");
    await writeFile(path.join(dir, "missing.xml"), doc(order("b1"), noName));
    await writeFile(
      path.join(dir, "date.xml"),
      doc(order("c1").replace("11/23/2026 14:05", "23/11/2026 14:05")),
    );
    await writeFile(
      path.join(dir, "broken.xml"),
      "<Orders>\n<Order><OrderID>x</OrderNumber></Order>\n</Orders>",
    );
    await waitFor(async () => (await list("failed")).length === 6, { what: "3 files in failed/" });
    expect(await list("failed")).toEqual([
      "broken.xml",
      "broken.xml.error.txt",
      "date.xml",
      "date.xml.error.txt",
      "missing.xml",
      "missing.xml.error.txt",
    ]);
    const error = (name: string) => readFile(path.join(dir, "failed", `${name}.error.txt`), "utf8");
    expect(await error("missing.xml")).toMatch(
      /^Order 2 \(OrderNumber N-b2\): Customer\/BillTo\/Name is required\n$/,
    );
    expect(await error("date.xml")).toMatch(
      /^Order 1 \(OrderNumber N-c1\): OrderDate is not a real date-time, got "23\/11\/2026 14:05"/,
    );
    expect(await error("broken.xml")).toMatch(/^not well-formed XML at line 2, column \d+: /);
    expect(await orderCount()).toBe(0);
    expect((await files()).map((f) => [f.file_name, f.state])).toEqual(
      expect.arrayContaining([
        ["missing.xml", "failed"],
        ["date.xml", "failed"],
        ["broken.xml", "failed"],
      ]),
    );
    expect(await outcomes(app)).toEqual({ imported: 0, duplicate: 0, failed: 3 });
    expect(await list()).toEqual(["failed", "processed"]);
  });

  it("a file written slowly in pieces is read once, whole; dot-files, .tmp and .part are left alone", async () => {
    const app = await start();
    await writeFile(path.join(dir, ".hidden.xml"), doc(order("h1")));
    await writeFile(path.join(dir, "upload.xml.tmp"), doc(order("t1")));
    await writeFile(path.join(dir, "upload.part"), doc(order("p1")));
    const text = doc(order("s1"), order("s2"), order("s3"), order("s4"));
    const pieces = 6;
    const size = Math.ceil(text.length / pieces);
    const waiting = async () => {
      const status = (await app.sources[0]?.instance.status?.()) as {
        waiting: Array<{ file: string; bytes: number }>;
      };
      return status.waiting.find((w) => w.file === "slow.xml")?.bytes;
    };
    for (let i = 0; i < pieces; i++) {
      await appendFile(path.join(dir, "slow.xml"), text.slice(i * size, (i + 1) * size));
      // The reactor has looked at the file as it is now (half-written) before the next piece.
      const written = Math.min((i + 1) * size, text.length);
      if (i < pieces - 1) {
        await waitFor(async () => (await waiting()) === written, {
          what: `slow.xml seen at ${written} bytes`,
        });
      }
    }
    await waitFor(processed("slow.xml"), { what: "slow.xml in processed/" });
    expect(await files()).toEqual([
      { file_name: "slow.xml", state: "imported", orders: 4, error: null },
    ]);
    await waitFor(() => ["s1", "s2", "s3", "s4"].every((k) => fake.received.get(k) === 1), {
      what: "4 orders at ShipStation",
    });
    // The producer's way: write under a temporary name, then rename.
    await rename(path.join(dir, "upload.xml.tmp"), path.join(dir, "upload.xml"));
    await waitFor(processed("upload.xml"), { what: "upload.xml in processed/" });
    expect(await list()).toEqual([".hidden.xml", "failed", "processed", "upload.part"]);
    expect(await outcomes(app)).toEqual({ imported: 2, duplicate: 0, failed: 0 });
  });

  it("a symbolic link is refused unread; a FIFO and a folder named .xml are never opened; the rest flows", async () => {
    const outside = await mkdtemp(path.join(tmpdir(), "pg-reactor-outside-"));
    try {
      await writeFile(path.join(outside, "secret.xml"), doc(order("x1")));
      await symlink(path.join(outside, "secret.xml"), path.join(dir, "link.xml"));
      execFileSync("mkfifo", [path.join(dir, "pipe.xml")]);
      await mkdir(path.join(dir, "folder.xml"));
      const app = await start();
      await writeFile(path.join(dir, "fine.xml"), doc(order("y1")));
      await waitFor(processed("fine.xml"), { what: "fine.xml in processed/" });
      await waitFor(async () => (await list("failed")).includes("link.xml"), {
        what: "link.xml in failed/",
      });
      expect(await readFile(path.join(dir, "failed", "link.xml.error.txt"), "utf8")).toBe(
        "a symbolic link is not imported: put the file itself in the folder\n",
      );
      expect(await list()).toEqual(["failed", "folder.xml", "pipe.xml", "processed"]);
      expect(fake.received.has("x1")).toBe(false);
      await waitFor(() => fake.received.get("y1") === 1, { what: "y1 at ShipStation" });
      expect(await outcomes(app)).toEqual({ imported: 1, duplicate: 0, failed: 1 });
    } finally {
      await rm(outside, { recursive: true, force: true });
    }
  });

  it("a file that cannot be moved out is imported once, warned about, and moved once the folder is fixed", async () => {
    await db.pool.query(
      "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'poll_interval_seconds', '1')",
    );
    const app = await start();
    await waitFor(async () => (await list()).includes("processed"), { what: "processed/ made" });
    // processed/ replaced by a file: tests run as root, where permissions would not stop a rename.
    await rm(path.join(dir, "processed"), { recursive: true });
    await writeFile(path.join(dir, "processed"), "not a folder");
    await writeFile(path.join(dir, "stuck.xml"), doc(order("w1")));
    const check = () => app.sources[0]?.instance.checks?.()[0];
    await waitFor(() => check()?.status === "warn", { what: "imports:folder warns" });
    expect(check()?.output).toMatch(/processed/);
    await waitFor(() => fake.received.get("w1") === 1, { what: "w1 at ShipStation" });
    await rm(path.join(dir, "processed"));
    await waitFor(processed("stuck.xml"), { what: "stuck.xml in processed/ after the fix" });
    await waitFor(() => check()?.status === "pass", { what: "imports:folder passes again" });
    expect(await outcomes(app)).toEqual({ imported: 1, duplicate: 0, failed: 0 });
    expect(await files()).toHaveLength(1);
  });

  it("two replicas sharing the folder import each of 20 files once", async () => {
    // Half the files are there before the replicas start (the start rescan), half land after.
    const write = (i: number) =>
      writeFile(path.join(dir, `batch-${i}.xml`), doc(order(`r${i}-1`), order(`r${i}-2`)));
    await mkdir(dir, { recursive: true });
    await Promise.all(Array.from({ length: 10 }, (_, i) => write(i)));
    const replicas = await startReplicas(2, {
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      env: { IMPORT_DIR: dir },
    });
    apps.push(...replicas);
    await Promise.all(Array.from({ length: 10 }, (_, i) => write(i + 10)));
    await waitFor(async () => (await list("processed")).length === 20, {
      what: "20 files in processed/",
    });
    await waitFor(() => fake.received.size === 40, { what: "40 orders at ShipStation" });
    expect([...fake.received.values()].every((n) => n === 1)).toBe(true);
    const rows = await files();
    expect(rows).toHaveLength(20);
    expect(rows.every((r) => r.state === "imported" && r.orders === 2)).toBe(true);
    const [a, b] = await Promise.all(replicas.map(outcomes));
    expect((a?.imported ?? 0) + (b?.imported ?? 0)).toBe(20);
    expect((a?.duplicate ?? 0) + (b?.duplicate ?? 0)).toBe(0);
    expect(await list()).toEqual(["failed", "processed"]);
  });

  it("POST /admin/imports takes the same XML: imported, duplicate, and a 400 that says where", async () => {
    const app = await start();
    const server = await buildStatusServer(app, makeLogger("silent"));
    try {
      const post = (body: string, type = "application/xml", query = "") =>
        server.inject({
          method: "POST",
          url: `/admin/imports${query}`,
          headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": type },
          payload: body,
        });
      const xml = doc(order("m1"), order("m2"));
      const first = await post(xml, "application/xml", "?file_name=web-1.xml");
      expect(first.statusCode, first.body).toBe(200);
      expect(first.json()).toMatchObject({
        outcome: "imported",
        fileName: "web-1.xml",
        orders: { inserted: 2, updated: 0, unchanged: 0 },
      });
      await waitFor(() => fake.received.get("m1") === 1 && fake.received.get("m2") === 1, {
        what: "m1 and m2 at ShipStation",
      });
      const again = await post(xml, "text/xml; charset=utf-8");
      expect(again.statusCode).toBe(200);
      expect(again.json()).toMatchObject({
        outcome: "duplicate",
        fileId: first.json().fileId,
        duplicateOf: { fileName: "web-1.xml" },
      });

      const bad = await post("<Orders>\n  <Order><OrderID>1</Order>\n</Orders>");
      expect(bad.statusCode).toBe(400);
      expect(bad.json()).toMatchObject({
        outcome: "failed",
        line: 2,
        message: expect.stringMatching(/^not well-formed XML at line 2, column \d+: /),
      });

      const json = await post(JSON.stringify({ orders: [] }), "application/json");
      expect(json.statusCode).toBe(415);
      expect(json.json().message).toMatch(/Content-Type: application\/xml or text\/xml/);
      const anonymous = await server.inject({
        method: "POST",
        url: "/admin/imports",
        headers: { "content-type": "application/xml" },
        payload: xml,
      });
      expect(anonymous.statusCode).toBe(401);
      expect(await outcomes(app)).toEqual({ imported: 1, duplicate: 1, failed: 1 });
      expect(await orderCount()).toBe(2);
    } finally {
      await server.close();
    }
  });

  it("pg-reactor import <file> imports a file as the folder would, and refuses a bad one in one line", async () => {
    const good = path.join(dir, "cli.xml");
    await writeFile(good, doc(order("k1"), order("k2"), order("k3")));
    const run = async (file: string) => {
      const proc = spawnEntry("src/cli.ts", { DATABASE_URL: db.url }, ["import", file]);
      const { code } = await proc.exited;
      return { code, output: proc.output() };
    };
    const ok = await run(good);
    expect(ok.code, ok.output).toBe(0);
    expect(JSON.parse(ok.output)).toMatchObject({
      outcome: "imported",
      fileName: "cli.xml",
      orders: { inserted: 3 },
    });
    expect(await orderCount()).toBe(3);
    const dup = await run(good);
    expect(JSON.parse(dup.output)).toMatchObject({ outcome: "duplicate" });

    const bad = path.join(dir, "bad.xml");
    await writeFile(
      bad,
      doc(order("k4").replace("<Quantity>1</Quantity>", "<Quantity>0</Quantity>")),
    );
    const refused = await run(bad);
    expect(refused.code).toBe(1);
    expect(refused.output).toMatch(
      /^pg-reactor: .*bad\.xml refused: Order 1 \(OrderNumber N-k4\): Items\/Item\[1\]\/Quantity must be a whole number of at least 1, got "0"\n$/,
    );
    const missing = await run(path.join(dir, "nope.xml"));
    expect(missing.code).toBe(1);
    expect(missing.output).toMatch(/^pg-reactor: cannot read .*nope\.xml: ENOENT/);
    // The CLI leaves the file where it is.
    expect(await list()).toEqual(["bad.xml", "cli.xml"]);
  });

  it("a file over 50 MB fails unread; a missing folder is a warning until it exists", async () => {
    const missing = path.join(dir, "later");
    // The rescan runs every poll_interval_seconds: 1 s here, so the test waits little.
    await db.pool.query(
      "INSERT INTO configuration_params (category, parameter_name, value) VALUES ('reactor', 'poll_interval_seconds', '1')",
    );
    const app = await start({ IMPORT_DIR: missing });
    await waitFor(async () => app.sources[0]?.instance.checks?.()[0]?.status === "warn", {
      what: "imports:folder warns",
    });
    expect(app.sources[0]?.instance.checks?.()[0]?.output).toMatch(/does not exist/);
    await mkdir(missing);
    // Sparse: 60 MB on paper, nothing on disk.
    await writeFile(path.join(missing, "huge.xml"), "");
    await truncate(path.join(missing, "huge.xml"), 60 * 1024 * 1024);
    await waitFor(
      async () => (await readdir(path.join(missing, "failed")).catch(() => [])).length === 2,
      {
        what: "huge.xml in failed/",
      },
    );
    expect(await readFile(path.join(missing, "failed", "huge.xml.error.txt"), "utf8")).toMatch(
      /^the file is 62914560 bytes; at most 52428800 are imported from one document \(split it\)\n$/,
    );
    expect(app.sources[0]?.instance.checks?.()[0]?.status).toBe("pass");
  });

  it("a file that ends before </Orders> and stops changing is refused after the grace, saying so", async () => {
    const outcomesSeen: ImportOutcome[] = [];
    const folder = makeFolderImporter({
      dir,
      pool: db.pool as never,
      directUrl: db.url,
      logger: makeLogger("silent"),
      counted: (o) => outcomesSeen.push(o),
      incompleteGraceMs: 500,
    });
    await writeFile(path.join(dir, "cut.xml"), doc(order("z1")).slice(0, 300));
    await folder.start();
    try {
      await waitFor(async () => (await list("failed")).length === 2, {
        what: "cut.xml in failed/",
      });
      expect(await readFile(path.join(dir, "failed", "cut.xml.error.txt"), "utf8")).toMatch(
        /^not well-formed XML at line \d+, column \d+: .* \(the file does not end with <\/Orders> and did not change for 1 s: was it still being written\? Write it under a \.tmp name and rename it when complete\)\n$/,
      );
      expect(outcomesSeen).toEqual(["failed"]);
    } finally {
      await folder.stop();
    }
  });
});
