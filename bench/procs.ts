// Child processes for the drain measurements, and what each one costs. Every reactor
// replica and the HTTP receivers run in processes of their own, as in production; CPU
// time comes from /proc/<pid>/stat (utime + stime), RSS from /proc/<pid>/status.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { copyFile, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type pg from "pg";
import { sleep } from "./lib.js";

export const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** The bench's own children, compiled (with the sources they import) under dist/. */
const CHILDREN_DIR = "dist/bench-children";
const run = promisify(execFile);
/** A child that ignores SIGTERM this long is killed. */
const STOP_GRACE_MS = 15_000;
/** RSS (and the list of Postgres backends, every 7th time) is sampled this often. */
const SAMPLE_MS = 150;

let built: Promise<void> | null = null;

/**
 * Compiles the service (dist/main.js, as `npm start` runs it) and the bench's children,
 * once per run: tsx would add its transpiler to every child's RSS and start-up. Emitted
 * without type checking, as `npm start` does; `npm run typecheck` checks the same files.
 */
export function buildChildren(): Promise<void> {
  built ??= (async () => {
    const tsc = `${ROOT}node_modules/typescript/bin/tsc`;
    await run(process.execPath, [tsc, "-p", "tsconfig.build.json", "--noCheck"], { cwd: ROOT });
    await run(
      process.execPath,
      [
        tsc,
        "--noCheck",
        "--rootDir",
        ".",
        "--outDir",
        CHILDREN_DIR,
        "--module",
        "nodenext",
        "--target",
        "es2022",
        "--skipLibCheck",
        "--types",
        "node",
        "bench/replica-child.ts",
        "bench/receiver-child.ts",
        "bench/pickup-child.ts",
      ],
      { cwd: ROOT },
    );
    // The compiled sources read their version from ../package.json and are ES modules.
    await copyFile(`${ROOT}package.json`, `${ROOT}${CHILDREN_DIR}/package.json`);
  })().catch((err: unknown) => {
    built = null;
    throw err;
  });
  return built;
}

/** Arguments that run a compiled bench child (`replica-child` or `receiver-child`). */
export const benchChild = (name: "replica-child" | "receiver-child" | "pickup-child") => [
  `${CHILDREN_DIR}/bench/${name}.js`,
];

/** What a child said: an IPC message, or a JSON line it printed (the service's log records). */
export type Said = Record<string, unknown>;

export interface Child {
  name: string;
  pid: number;
  process: ChildProcess;
  /** Calls `fn` with everything the child says from now on; returns the unsubscribe. */
  listen(fn: (said: Said) => void): () => void;
  /** The first thing the child says that `test` accepts; rejects if it exits or is silent. */
  when(test: (said: Said) => boolean, what: string, timeoutMs: number): Promise<Said>;
  send(message: Said): void;
  /** SIGTERM, then SIGKILL after a grace period; resolves once it has exited. */
  stop(): Promise<void>;
  /** The last lines it printed, for error messages. */
  tail(): string;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Node running `args` in the repository, with a minimal environment plus `env`. */
export function spawnChild(
  name: string,
  args: string[],
  env: Record<string, string>,
  options: { ipc?: boolean } = {},
): Child {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // However the bench ends (an error, process.exit), no child outlives it.
    process.once("exit", () => {
      for (const c of live) c.kill("SIGKILL");
    });
  }
  // BENCH_CPU_PROF=<folder>: every child writes a V8 CPU profile there when it exits
  // (open it in Chrome DevTools, or summarise it by function).
  const profile = process.env.BENCH_CPU_PROF
    ? ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`]
    : [];
  const child = spawn(process.execPath, [...profile, ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "", ...env },
    stdio: ["ignore", "pipe", "pipe", ...(options.ipc ? (["ipc"] as const) : [])],
  });
  if (child.pid === undefined) throw new Error(`bench: could not start ${name}`);
  live.add(child);
  const exited = new Promise<void>((resolve) =>
    child.once("exit", () => {
      live.delete(child);
      resolve();
    }),
  );
  const listeners = new Set<(said: Said) => void>();
  const tail: string[] = [];
  const hear = (said: Said) => {
    for (const fn of listeners) fn(said);
  };
  child.on("message", (m) => {
    if (m && typeof m === "object") hear(m as Said);
  });
  // Read to the end (a full pipe would stop the child); JSON lines are heard.
  for (const stream of [child.stdout, child.stderr]) {
    let partial = "";
    stream?.setEncoding("utf8");
    stream?.on("data", (chunk: string) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) {
        tail.push(line);
        if (tail.length > 20) tail.shift();
        if (!line.startsWith("{")) continue;
        try {
          hear(JSON.parse(line) as Said);
        } catch {
          // Not a record: kept in the tail only.
        }
      }
    });
  }
  const self: Child = {
    name,
    pid: child.pid,
    process: child,
    listen(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    when(test, what, timeoutMs) {
      return new Promise((resolve, reject) => {
        const done = (err: Error | null, said?: Said) => {
          clearTimeout(timer);
          off();
          child.off("exit", onExit);
          if (err) reject(err);
          else resolve(said as Said);
        };
        const timer = setTimeout(
          () =>
            done(new Error(`bench: ${name}: no ${what} within ${timeoutMs} ms\n${self.tail()}`)),
          timeoutMs,
        );
        const off = self.listen((said) => {
          if (test(said)) done(null, said);
        });
        const onExit = (code: number | null, signal: string | null) =>
          done(
            new Error(`bench: ${name} exited (${signal ?? code}) before ${what}\n${self.tail()}`),
          );
        child.once("exit", onExit);
        if (child.exitCode !== null || child.signalCode !== null) {
          onExit(child.exitCode, child.signalCode);
        }
      });
    },
    send(message) {
      child.send?.(message);
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      await Promise.race([exited, sleep(STOP_GRACE_MS)]);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGKILL");
        await Promise.race([exited, sleep(5_000)]);
      }
    },
    tail: () => tail.join("\n"),
  };
  return self;
}

/** Stops every child given, all at once; never throws. */
export async function stopAll(children: Array<Child | null | undefined>): Promise<void> {
  await Promise.all(children.map((c) => c?.stop().catch(() => undefined)));
}

let ticksPerSecond: number | null = null;

/** The kernel's clock ticks per second (CLK_TCK), in which /proc reports CPU time. */
export async function clockTicks(): Promise<number> {
  if (ticksPerSecond === null) {
    try {
      ticksPerSecond = Number((await run("getconf", ["CLK_TCK"])).stdout.trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** utime + stime of a process (all its threads), in clock ticks, or null once it is gone. */
export async function cpuTicks(pid: number): Promise<number | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return null;
  }
}

/** VmRSS of a process, in MiB, or null once it is gone. */
export async function rssMiB(pid: number): Promise<number | null> {
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    const kb = /VmRSS:\s+(\d+) kB/.exec(status)?.[1];
    return kb ? Math.round((Number(kb) / 1024) * 10) / 10 : null;
  } catch {
    return null;
  }
}

/** Busy and total ticks of the whole machine, from the first line of /proc/stat. */
async function machineTicks(): Promise<{ busy: number; total: number } | null> {
  try {
    const line = (await readFile("/proc/stat", "utf8")).split("\n")[0] ?? "";
    const [user, nice, system, idle, iowait, irq, softirq, steal] = line
      .trim()
      .split(/\s+/)
      .slice(1)
      .map(Number) as number[];
    const busy = (user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0);
    const all = busy + (steal ?? 0) + (idle ?? 0) + (iowait ?? 0);
    return { busy: busy + (steal ?? 0), total: all };
  } catch {
    return null;
  }
}

/** Backends of the client's database (none when the server is not on this machine). */
async function postgresPids(db: pg.Client): Promise<number[]> {
  const { rows } = await db.query(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
  );
  const pids: number[] = [];
  for (const { pid } of rows as Array<{ pid: number }>) {
    const comm = await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "");
    if (comm.trim() === "postgres") pids.push(pid);
  }
  return pids;
}

export interface WindowUsage {
  seconds: number;
  /** CPU cores busy on average over the window, per process given, in order. */
  cores: Array<number | null>;
  /** Peak VmRSS, MiB, per process given, sampled every SAMPLE_MS. */
  rssPeakMiB: Array<number | null>;
  /** The database's backends together (null when the server runs elsewhere). */
  postgresCores: number | null;
  /** Every core of the machine together (its other tenants included), and how many it has. */
  machineCores: number | null;
  cpus: number;
  /** The bench driver itself. */
  driverCores: number;
}

const cores = (ticks: number, hz: number, seconds: number) =>
  Number((ticks / hz / seconds).toFixed(2));

/**
 * Starts a measured window over `pids` (and the backends of `db`'s database): reads
 * their CPU time now, then samples RSS until the returned `end()`, which reads CPU time
 * again. The window's wall time runs from just before this call returns to `end()`'s
 * call.
 */
export async function startWindow(pids: number[], db: pg.Client, cpus: number) {
  const hz = await clockTicks();
  const peaks: Array<number | null> = pids.map(() => null);
  // Backends: CPU time at the window's start (0 for one started in it) and the latest.
  const backends = new Map<number, { first: number; last: number }>();
  const readBackends = async (relist: boolean) => {
    const known = relist ? await postgresPids(db) : [...backends.keys()];
    for (const pid of known) {
      const t = await cpuTicks(pid);
      if (t === null) continue;
      const seen = backends.get(pid);
      if (seen) seen.last = t;
      else backends.set(pid, { first: 0, last: t });
    }
  };
  let tick = 0;
  let sampling = Promise.resolve();
  const sample = async () => {
    const rss = await Promise.all(pids.map(rssMiB));
    rss.forEach((mib, i) => {
      if (mib !== null && (peaks[i] ?? 0) < mib) peaks[i] = mib;
    });
    if (local) await readBackends(++tick % 7 === 0).catch(() => undefined);
  };
  // Every backend listed now has its base reading; one seen later started in the window.
  const listed = await postgresPids(db);
  const local = listed.length > 0;
  for (const pid of listed) {
    const t = await cpuTicks(pid);
    if (t !== null) backends.set(pid, { first: t, last: t });
  }
  await sample();
  // The window starts here, just after its base readings; the caller starts the work next.
  const start = await Promise.all(pids.map(cpuTicks));
  const machine0 = await machineTicks();
  const driver0 = process.cpuUsage();
  const t0 = performance.now();
  const timer = setInterval(() => {
    sampling = sampling.then(sample);
  }, SAMPLE_MS);

  return {
    async end(): Promise<WindowUsage> {
      const seconds = (performance.now() - t0) / 1000;
      const endTicks = await Promise.all(pids.map(cpuTicks));
      const machine1 = await machineTicks();
      const driver = process.cpuUsage(driver0);
      clearInterval(timer);
      await sampling;
      if (local) await readBackends(true).catch(() => undefined);
      let pgTicks = 0;
      for (const { first, last } of backends.values()) pgTicks += last - first;
      return {
        seconds,
        cores: pids.map((_, i) => {
          const a = start[i];
          const b = endTicks[i];
          return a == null || b == null ? null : cores(b - a, hz, seconds);
        }),
        rssPeakMiB: peaks,
        postgresCores: local ? cores(pgTicks, hz, seconds) : null,
        machineCores:
          machine0 && machine1
            ? Number(
                (
                  ((machine1.busy - machine0.busy) / (machine1.total - machine0.total)) *
                  cpus
                ).toFixed(2),
              )
            : null,
        cpus,
        driverCores: Number(((driver.user + driver.system) / 1e6 / seconds).toFixed(2)),
      };
    },
  };
}
