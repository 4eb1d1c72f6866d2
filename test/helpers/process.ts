// Runs the real entry points (npm start, and the CLI behind npm run migrate) as child
// processes, and reads what they print: the log records and the status server's address.
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));

export interface Spawned {
  child: ChildProcess;
  /** stdout and stderr together, in arrival order. */
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface SpawnOptions {
  cwd?: string;
  /** Run as this OS user (root only): proves the process writes nowhere it may not. */
  uid?: number;
  gid?: number;
}

/** Node with `args`, a minimal environment plus `env`, output captured. */
export function spawnNode(
  args: string[],
  env: Record<string, string>,
  options: SpawnOptions = {},
): Spawned {
  return spawnCommand(process.execPath, args, env, options);
}

/** Any command (npm, say), like spawnNode. */
export function spawnCommand(
  command: string,
  args: string[],
  env: Record<string, string>,
  options: SpawnOptions = {},
): Spawned {
  const child = spawn(command, args, {
    cwd: options.cwd ?? ROOT,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
    ...(options.uid === undefined ? {} : { uid: options.uid, gid: options.gid }),
  });
  let out = "";
  child.stdout?.on("data", (d) => {
    out += d;
  });
  child.stderr?.on("data", (d) => {
    out += d;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal })),
  );
  return { child, output: () => out, exited };
}

/** An entry point from the TypeScript sources (the test suite runs what it edits). */
export function spawnEntry(
  entry: "src/main.ts" | "src/cli.ts",
  env: Record<string, string>,
  args: string[] = [],
): Spawned {
  return spawnNode(["--import", "tsx", entry, ...args], env);
}

/** Every line printed so far, parsed; throws naming the first line that is not JSON. */
export function logRecords(proc: Spawned): Array<Record<string, unknown>> {
  return proc
    .output()
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => {
      try {
        return JSON.parse(line) as Record<string, unknown>;
      } catch {
        throw new Error(`not a JSON log record: ${line}`);
      }
    });
}

/** The status server's base URL, once the process has logged "pg-reactor starting". */
export function statusUrl(proc: Spawned): string | null {
  for (const line of proc.output().split("\n")) {
    if (!line.includes('"pg-reactor starting"')) continue;
    const record = JSON.parse(line) as { http?: string };
    return record.http ?? null;
  }
  return null;
}
