// What the reactor writes to its log: one summary line per few seconds of work, nothing
// at idle, and every line JSON.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import {
  createTestDatabase,
  insertOrders,
  setSetting,
  type TestDatabase,
  waitFor,
} from "./helpers/db.js";
import { metricTotal, startReactor } from "./helpers/reactor.js";

describe("logs", () => {
  let db: TestDatabase;
  let fake: FakeShipStation;
  let app: App;
  const lines: string[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    fake = await startFakeShipStation();
    await setSetting(db.pool, "poll_interval_seconds", "1");
    app = await startReactor({ databaseUrl: db.url, shipstationUrl: fake.url, logLines: lines });
  });
  afterAll(async () => {
    await app.stop(1_000);
    await fake.close();
    await db.drop();
  });

  it("a drain logs one summary with how many and how long, and an idle reactor logs nothing", async () => {
    await insertOrders(db.pool, 500);
    const summary = await waitFor(
      () => lines.map((l) => JSON.parse(l)).find((l) => l.msg === "processed 500 rows"),
      { timeoutMs: 15_000, what: "the summary line" },
    );
    expect(summary).toMatchObject({ workload: "uploads", rows: 500, success: 500 });
    expect(typeof summary.seconds).toBe("number");
    // Per-row or per-batch lines at info would be noise at this volume.
    expect(lines.filter((l) => JSON.parse(l).level >= 30).length).toBeLessThan(20);

    const before = lines.length;
    const polls = await metricTotal(app.metrics.safetyPolls);
    await waitFor(async () => (await metricTotal(app.metrics.safetyPolls)) >= polls + 3, {
      what: "three safety polls at idle",
    });
    const idle = lines
      .slice(before)
      .map((l) => JSON.parse(l))
      .filter((l) => l.level >= 30);
    expect(idle).toEqual([]);
  });
});
