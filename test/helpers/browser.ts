// A real browser for the console tests: Debian's Chromium driven by playwright-core.
// Where Chromium is missing the tests skip and say so; under CI=true a missing Chromium
// fails instead, so CI never passes without driving the page.
import { access, constants } from "node:fs/promises";
import type { Page } from "playwright-core";
import type { TestContext } from "vitest";

const CANDIDATES = [
  process.env.CHROMIUM_PATH,
  "/usr/bin/chromium",
  "/usr/bin/chromium-browser",
  "/usr/bin/google-chrome",
].filter((p): p is string => Boolean(p));

const MISSING = "Chromium not installed (Debian package `chromium`, or set CHROMIUM_PATH)";

/** The Chromium executable, or null where there is none. */
export async function findChromium(): Promise<string | null> {
  for (const candidate of CANDIDATES) {
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** For a test file's setup: null where Chromium is missing, but a failure under CI=true. */
export async function chromiumForTests(): Promise<string | null> {
  const bin = await findChromium();
  if (!bin && process.env.CI === "true")
    throw new Error(`${MISSING}: CI must run the console's browser tests`);
  return bin;
}

export function skipWithoutChromium<T>(ctx: TestContext, bin: T | null): asserts bin is T {
  if (bin === null) ctx.skip(`${MISSING}: skipped`);
}

/** Logs a page in to the console with the admin token and waits for the Now view. */
export async function logInToConsole(p: Page, base: string, token: string): Promise<void> {
  await p.goto(`${base}/console`);
  await p.fill("#token", token);
  await p.click("button[type=submit]");
  await p.waitForSelector("#workloads .card");
}

/** Waits for `n` more live samples than the page has received so far. */
export async function samplesFromNow(p: Page, n: number, timeout = 15_000): Promise<void> {
  const now = Number(await p.evaluate(() => document.body.dataset.samples ?? 0));
  await p.waitForFunction((want) => Number(document.body.dataset.samples ?? 0) >= want, now + n, {
    timeout,
  });
}
