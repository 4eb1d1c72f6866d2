// promtool (Debian's prometheus package) validates the /metrics exposition, the alert
// rules, their unit tests and the scrape config. Outside CI a missing promtool skips those
// tests with the reason; under CI=true it fails them, so CI never passes without checking.
import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import type { TestContext } from "vitest";

export const run = promisify(execFile);

export async function hasPromtool(): Promise<boolean> {
  return run("promtool", ["--version"]).then(
    () => true,
    () => false,
  );
}

/** Skips the calling test (with the reason) where promtool is missing; fails it under CI. */
export async function requirePromtool(ctx: TestContext): Promise<void> {
  if (await hasPromtool()) return;
  const reason = "promtool not installed (Debian package `prometheus`)";
  if (process.env.CI === "true") throw new Error(`${reason}: CI must run this check`);
  ctx.skip(`${reason}: skipped`);
}

export interface PromtoolResult {
  code: number | null;
  /** stdout and stderr together, in the order promtool wrote them. */
  output: string;
}

/** Runs promtool with `input` on stdin; resolves with its exit code, never throws on one. */
export function promtool(args: string[], options: { input?: string; cwd?: string } = {}) {
  return new Promise<PromtoolResult>((resolve, reject) => {
    const child = spawn("promtool", args, { cwd: options.cwd, stdio: ["pipe", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d) => {
      output += d;
    });
    child.stderr.on("data", (d) => {
      output += d;
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, output }));
    child.stdin.end(options.input ?? "");
  });
}
