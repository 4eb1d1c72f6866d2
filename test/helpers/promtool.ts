// promtool (Debian's prometheus package) validates metrics and alert rules where it is
// installed; the tests that use it say so when it is not.
import { execFile } from "node:child_process";
import { promisify } from "node:util";

export const run = promisify(execFile);

export async function hasPromtool(): Promise<boolean> {
  return run("promtool", ["--version"]).then(
    () => true,
    () => false,
  );
}
