// The operator console in a real browser (Debian's Chromium driven by playwright-core),
// against a real reactor, real PostgreSQL, a fake ShipStation and a webhook receiver on
// loopback. Screenshots of each main view go to test-results/console/ and their file
// names are printed; the page's weight and time to first render are printed as
// CONSOLE-REPORT lines (measured, never asserted).
import { mkdir } from "node:fs/promises";
import path from "node:path";
import type { FastifyInstance } from "fastify";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { App } from "../src/app.js";
import { type FakeShipStation, startFakeShipStation } from "../src/demo/fake-shipstation.js";
import { type Receiver, startReceiver } from "../src/demo/receiver.js";
import { serverUrl, startStatusServer } from "../src/http/server.js";
import {
  chromiumForTests,
  logInToConsole,
  samplesFromNow,
  skipWithoutChromium,
} from "./helpers/browser.js";
import {
  createTestDatabase,
  insertOrders,
  setSetting,
  subscribe,
  type TestDatabase,
  waitFor,
} from "./helpers/db.js";
import { ROOT } from "./helpers/process.js";
import { startReactor } from "./helpers/reactor.js";

const ADMIN_TOKEN = "console-test-admin-token-0123456789";
const SHOTS = path.join(ROOT, "test-results", "console");

describe("operator console in a browser", () => {
  let chromiumPath: string | null;
  let db: TestDatabase;
  let fake: FakeShipStation;
  let receiver: Receiver;
  let app: App;
  let server: FastifyInstance;
  let base: string;
  let browser: Browser;
  let page: Page;
  const pageErrors: string[] = [];

  async function shot(p: Page, name: string) {
    const file = path.join(SHOTS, `${name}.png`);
    await p.screenshot({ path: file, fullPage: true });
    console.log(`screenshot: ${path.relative(ROOT, file)}`);
  }

  async function loggedIn(options: Parameters<Browser["newContext"]>[0] = {}) {
    const ctx = await browser.newContext(options);
    const p = await ctx.newPage();
    p.on("pageerror", (err) => pageErrors.push(err.message));
    await logInToConsole(p, base, ADMIN_TOKEN);
    return { ctx, p };
  }

  beforeAll(async () => {
    chromiumPath = await chromiumForTests();
    if (!chromiumPath) return;
    await mkdir(SHOTS, { recursive: true });
    db = await createTestDatabase();
    fake = await startFakeShipStation();
    receiver = await startReceiver();
    app = await startReactor({
      databaseUrl: db.url,
      shipstationUrl: fake.url,
      env: { ADMIN_TOKEN },
    });
    server = await startStatusServer(app, app.logger);
    base = serverUrl(server);
    browser = await chromium.launch({ executablePath: chromiumPath });
    ({ p: page } = await loggedIn({ viewport: { width: 1280, height: 900 } }));
  });

  afterAll(async () => {
    if (!chromiumPath) return;
    await browser?.close();
    await server?.close();
    await app?.stop(1_000);
    await fake?.close();
    await receiver?.close();
    await db?.drop();
    // A script error on any page is a defect even where no assertion looked.
    expect(pageErrors).toEqual([]);
  });

  it("without a login only the form shows; a wrong token is refused; the right one opens the console", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    const fresh = await browser.newContext();
    const p = await fresh.newPage();
    await p.goto(`${base}/console`);
    expect(await p.isVisible("#token")).toBe(true);
    expect(await p.$("#workloads")).toBeNull();
    // The API refuses a browser without the cookie.
    const refused = await p.evaluate(async () => (await fetch("/admin/settings")).status);
    expect(refused).toBe(401);

    await p.fill("#token", "not-the-token-at-all");
    await p.click("button[type=submit]");
    await expect.poll(() => p.textContent("#login-error")).toMatch(/not the ADMIN_TOKEN/);
    expect(await p.$("#workloads")).toBeNull();

    await p.fill("#token", ADMIN_TOKEN);
    await p.click("button[type=submit]");
    await p.waitForSelector("#workloads .card");
    const cookie = (await fresh.cookies()).find((c) => c.name === "pgr_console");
    expect(cookie).toMatchObject({ httpOnly: true, sameSite: "Strict", path: "/" });
    expect(cookie?.value).not.toContain(ADMIN_TOKEN);
    expect(await p.locator("#workloads .card").count()).toBe(app.reactor.workloads.length);

    // Logging out ends it: the console shows the form again.
    await p.click("#logout");
    await p.waitForSelector("#token");
    await fresh.close();

    // A Bearer header opens it too.
    const bearer = await browser.newContext({
      extraHTTPHeaders: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    const b = await bearer.newPage();
    await b.goto(`${base}/console`);
    await b.waitForSelector("#workloads .card");
    await bearer.close();
  });

  it("the live figures move when orders flow, and the page does not jump while they update", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    await page.goto(`${base}/console#now`);
    await expect.poll(() => page.textContent("#stream"), { timeout: 10_000 }).toBe("live");
    const figure = (name: string) =>
      page.locator(`#workload-uploads [data-figure="${name}"]`).textContent();

    let flowing = true;
    const writer = (async () => {
      while (flowing) {
        await insertOrders(db.pool, 20);
        await new Promise((r) => setTimeout(r, 150));
      }
    })();
    try {
      await expect.poll(() => figure("completedPerSecond"), { timeout: 20_000 }).not.toBe("0");
      await expect
        .poll(() => figure("pickupLatencyP50Seconds"), { timeout: 20_000 })
        .toMatch(/ms$/);
      expect(await page.locator("#workload-uploads [data-state]").textContent()).toBe("flowing");
    } finally {
      flowing = false;
      await writer;
    }
    // Every chart is drawn.
    expect(await page.locator("#workload-uploads canvas").count()).toBe(4);
    await expect.poll(() => page.textContent("#system"), { timeout: 10_000 }).toMatch(/Listener/);
    await shot(page, "now");

    // Fixed boxes: three more updates move no card, figure or chart.
    const boxes = () =>
      page.evaluate(() =>
        [...document.querySelectorAll("#workloads .card, .figures, .chart, #system")].map((el) => {
          const r = el.getBoundingClientRect();
          return [r.x, r.y, r.width, r.height].map(Math.round).join(",");
        }),
      );
    const before = await boxes();
    await samplesFromNow(page, 3);
    expect(await boxes()).toEqual(before);
  });

  it("a failed delivery shows its attempts; retry from the page sends it again", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    await setSetting(db.pool, "delivery_retry_schedule_seconds", "1");
    receiver.fallback = { status: 500, body: "receiver says <b>no</b>" };
    const subscription = await subscribe(db.pool, `${receiver.url}/hook`, {
      eventTypes: ["console.*"],
    });
    await db.pool.query(
      `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
       VALUES ('order', 'A-1', 'console.failed', '{"orderNumber": "A-1", "note": "<script>x</script>"}')`,
    );
    const id = await waitFor(
      async () =>
        (
          await db.pool.query(
            "SELECT id FROM webhook_deliveries WHERE subscription_id = $1 AND state = 'failed'",
            [subscription],
          )
        ).rows[0]?.id,
      { what: "the delivery failed", timeoutMs: 20_000 },
    );

    await page.goto(`${base}/console#failed`);
    await page.selectOption("#failed-rows", "deliveries");
    const row = page.locator(`#failed-table tr[data-id="${id}"]`);
    await row.waitFor();
    expect(await row.textContent()).toContain("HTTP 500");
    await shot(page, "failed");

    await row.locator(`a[href="#delivery/${id}"]`).click();
    const attempts = page.locator("#attempts-table tbody tr");
    await expect.poll(() => attempts.count(), { timeout: 10_000 }).toBe(2);
    expect(await attempts.first().textContent()).toContain("500");
    // The receiver's answer is shown as text, not markup.
    expect(await page.locator("#attempts-table pre.excerpt").first().textContent()).toBe(
      "receiver says <b>no</b>",
    );
    expect(await page.textContent("#delivery-payload")).toContain("<script>x</script>");
    expect(await page.textContent("#delivery-facts")).toContain(receiver.url);
    await shot(page, "delivery");

    // The receiver recovers; Retry on the failed list makes the row pending and it arrives.
    receiver.fallback = { status: 204 };
    await page.goto(`${base}/console#failed`);
    await page.selectOption("#failed-rows", "deliveries");
    await row.locator("button", { hasText: "Retry" }).click();
    await expect.poll(() => page.textContent("#failed-message")).toMatch(/pending again/);
    await waitFor(
      async () =>
        (await db.pool.query("SELECT state FROM webhook_deliveries WHERE id = $1", [id])).rows[0]
          ?.state === "delivered",
      { what: "the retried delivery delivered", timeoutMs: 20_000 },
    );
    expect(receiver.delivered.size).toBe(1);
  });

  it("retry all matching asks first, with how many, and retries only those", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    receiver.fallback = { status: 500, body: "down" };
    await db.pool.query(
      `INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, payload)
       SELECT 'order', 'B-' || g, CASE WHEN g <= 2 THEN 'console.bulk' ELSE 'console.other' END, '{}'
       FROM generate_series(1, 3) g`,
    );
    await waitFor(
      async () =>
        (
          await db.pool.query(
            `SELECT count(*)::int AS n FROM webhook_deliveries d JOIN outbox_events e ON e.id = d.event_id
             WHERE e.event_type IN ('console.bulk', 'console.other') AND d.state = 'failed'`,
          )
        ).rows[0].n === 3,
      { what: "three deliveries failed", timeoutMs: 20_000 },
    );
    receiver.fallback = { status: 204 };
    const deliveredBefore = receiver.delivered.size;

    await page.goto(`${base}/console#failed`);
    await page.selectOption("#failed-rows", "deliveries");
    await page.fill('#failed-filter input[name="event_type"]', "console.bulk");
    await page.click('#failed-filter button[type="submit"]');
    await expect.poll(() => page.locator("#failed-table tbody tr").count()).toBe(2);
    await page.click("#retry-matching");
    await page.waitForSelector("#confirm[open]");
    expect(await page.textContent("#confirm-text")).toMatch(
      /Retry 2 failed deliveries matching event_type = console\.bulk/,
    );
    await page.click("#confirm-ok");
    await expect
      .poll(() => page.textContent("#failed-message"))
      .toMatch(/2 deliveries are pending/);
    await waitFor(() => receiver.delivered.size === deliveredBefore + 2, {
      what: "the two retried deliveries arrived",
      timeoutMs: 20_000,
    });
    const { rows } = await db.pool.query(
      `SELECT d.state FROM webhook_deliveries d JOIN outbox_events e ON e.id = d.event_id
       WHERE e.event_type = 'console.other'`,
    );
    expect(rows.map((r) => r.state)).toEqual(["failed"]);
  });

  it("a refused setting shows the database's message; a good one is in force at once", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    await page.goto(`${base}/console#settings`);
    const row = page.locator('tr[data-setting="lease_seconds"]');
    await row.waitFor();
    await row.locator("input").fill("abc");
    await row.locator("button", { hasText: "Save" }).click();
    await expect
      .poll(() => page.locator('[data-error="lease_seconds"]').textContent())
      .toBe("reactor.lease_seconds must be an integer from 5 to 3600, got 'abc'");
    const stored = await db.pool.query(
      "SELECT value FROM configuration_params WHERE category = 'reactor' AND parameter_name = 'lease_seconds'",
    );
    expect(stored.rows).toEqual([]);
    await shot(page, "settings");

    await row.locator("input").fill("60");
    await row.locator("button", { hasText: "Save" }).click();
    await expect
      .poll(() => page.locator('tr[data-setting="lease_seconds"] [data-value]').textContent())
      .toBe("60");
    expect(app.settings.current.lease_seconds).toBe(60);
  });

  it("a request that changes something without the page's CSRF token is refused", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    await page.goto(`${base}/console#settings`);
    const statuses = await page.evaluate(async () => {
      const put = (headers: Record<string, string>) =>
        fetch("/admin/settings/log_level", {
          method: "PUT",
          headers: { "content-type": "application/json", ...headers },
          body: JSON.stringify({ value: "debug" }),
        }).then((r) => r.status);
      const token = document.querySelector('meta[name="csrf-token"]')?.getAttribute("content");
      return {
        without: await put({}),
        wrong: await put({ "x-csrf-token": "forged" }),
        with: await put({ "x-csrf-token": token ?? "" }),
      };
    });
    expect(statuses).toEqual({ without: 403, wrong: 403, with: 200 });
    await setSetting(db.pool, "log_level", "info");
  });

  it("subscriptions: create shows the secret once; disable and delete from the list", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    await page.goto(`${base}/console#subscriptions`);
    await page.fill('#sub-create input[name="url"]', `${receiver.url}/from-console`);
    await page.fill('#sub-create input[name="event_types"]', "order.*, console.x");
    await page.click('#sub-create button[type="submit"]');
    const secret = await page.locator("[data-secret]").textContent();
    expect(secret).toMatch(/^whsec_/);
    const { rows } = await db.pool.query("SELECT id FROM webhook_subscriptions WHERE url = $1", [
      `${receiver.url}/from-console`,
    ]);
    const id = rows[0].id;
    const row = page.locator(`#subs-table tr[data-id="${id}"]`);
    await row.waitFor();
    expect(await row.textContent()).toContain("order.*, console.x");
    // The list never shows a secret.
    expect(await page.textContent("#subs-table")).not.toContain("whsec_");
    await shot(page, "subscriptions");

    await row.locator("button", { hasText: "Disable" }).click();
    await expect.poll(() => row.textContent()).toContain("disabled");
    await row.locator("button", { hasText: "Delete" }).click();
    await page.click("#confirm-ok");
    await expect.poll(() => row.count()).toBe(0);
  });

  it("works on a phone-sized screen and from the keyboard", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    const { ctx: phone, p } = await loggedIn({ viewport: { width: 390, height: 844 } });
    await samplesFromNow(p, 1);
    const overflow = await p.evaluate(
      () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
    );
    expect(overflow).toBeLessThanOrEqual(0);
    await shot(p, "now-phone");
    // Tab from the top reaches the navigation; Enter follows it.
    let focused = "";
    for (let i = 0; i < 6 && focused !== "Failed"; i++) {
      await p.keyboard.press("Tab");
      focused = await p.evaluate(() => document.activeElement?.textContent ?? "");
    }
    expect(focused).toBe("Failed");
    await p.keyboard.press("Enter");
    await p.waitForSelector("#view-failed:not([hidden])");
    await phone.close();
  });

  it("reports page weight and time to first render of a fresh first view", async (ctx) => {
    skipWithoutChromium(ctx, chromiumPath);
    const fresh = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const p = await fresh.newPage();
    await p.goto(`${base}/console`);
    await p.fill("#token", ADMIN_TOKEN);
    await p.click("button[type=submit]");
    await p.waitForSelector("#workloads canvas");
    const report = await p.evaluate(() => {
      const nav = performance.getEntriesByType("navigation")[0] as PerformanceNavigationTiming;
      const resources = performance.getEntriesByType("resource") as PerformanceResourceTiming[];
      const paint = performance.getEntriesByName("first-contentful-paint")[0];
      return {
        documentBytes: nav.transferSize,
        resourceBytes: resources
          .filter((r) => !r.name.includes("/console/events"))
          .reduce((sum, r) => sum + r.transferSize, 0),
        resources: resources.map((r) => `${new URL(r.name).pathname} ${r.transferSize}`),
        firstContentfulPaintMs: paint ? Math.round(paint.startTime) : null,
        domContentLoadedMs: Math.round(nav.domContentLoadedEventEnd),
      };
    });
    console.log(`CONSOLE-REPORT ${JSON.stringify(report)}`);
    expect(report.resourceBytes).toBeGreaterThan(0);
    await fresh.close();
  });
});
