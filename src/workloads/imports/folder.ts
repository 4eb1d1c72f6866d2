// The IMPORT_DIR watch (docs/architecture.md §1): an XML file is imported the moment it
// lands (file-system events), and a rescan every poll_interval_seconds catches what an
// event missed (network mounts and synced drives often send none). A file is read only
// when it is whole: its last bytes close the <Orders> root and it did not change while
// it was read. One that stays open-ended is refused after INCOMPLETE_GRACE_MS of quiet.
// Each file is taken under an advisory lock on its name, held until it has been moved
// out, so replicas sharing the folder import it once. The lock is taken on a direct
// connection (see db/direct-lock.ts); the import itself runs on the pool.
import { createHash } from "node:crypto";
import { createReadStream, type FSWatcher, type Stats, watch } from "node:fs";
import {
  access,
  constants,
  lstat,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  stat,
  writeFile,
} from "node:fs/promises";
import path from "node:path";
import { makeDirectSession } from "../../db/direct-lock.js";
import type { Pool } from "../../db/pool.js";
import type { Logger } from "../../logger.js";
import type { WorkloadCheck } from "../../reactor/workload.js";
import {
  type ImportOutcome,
  type ImportResult,
  importDocument,
  MAX_DOCUMENT_BYTES,
  recordRefusal,
} from "./import.js";

export const PROCESSED_DIR = "processed";
export const FAILED_DIR = "failed";
/** A file whose end is not </Orders> is refused once it has not changed for this long. */
export const INCOMPLETE_GRACE_MS = 30_000;
/** An oversized file is refused once its size has held this long (it may still be growing). */
const OVERSIZED_SETTLE_MS = 2_000;
/** A file that changed while it was read is looked at again after this long. */
const CHANGED_RETRY_MS = 250;
/** The end of a document is looked for in its last this many bytes. */
const TAIL_BYTES = 512;
/** The lock connection is closed after this long without a file (none is held at idle). */
const SESSION_IDLE_MS = 10_000;

/** `*.xml` (any case), never a dot-file: producers write `.name.xml`, `name.tmp` or `name.part` and rename. */
export function isCandidate(name: string): boolean {
  return !name.startsWith(".") && name.toLowerCase().endsWith(".xml");
}

/** The document's last non-blank bytes close the <Orders> root: it was written to the end. */
export function endsWithRoot(tail: Buffer): boolean {
  return /<\/Orders\s*>\s*$/.test(tail.toString("latin1"));
}

/** The advisory lock of one file name (the same on every replica sharing the folder). */
function lockKey(name: string): bigint {
  return createHash("sha256").update(`pg-reactor import ${name}`).digest().readBigInt64BE(0);
}

async function readTail(file: string, size: number): Promise<Buffer> {
  const handle = await open(file, "r");
  try {
    const length = Math.min(size, TAIL_BYTES);
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buffer, 0, length, size - length);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

async function sha256Of(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

const isMissing = (err: unknown) => (err as { code?: string }).code === "ENOENT";

/** An error of the file system about one path (not the database, not the network). */
const isFileError = (err: unknown) => {
  const e = err as { syscall?: unknown; path?: unknown };
  return typeof e.syscall === "string" && typeof e.path === "string";
};

/** `name`, or `name` with a time (and a counter) before the extension if it is taken. */
async function freeName(dir: string, name: string): Promise<string> {
  const ext = path.extname(name);
  const stem = name.slice(0, name.length - ext.length);
  const stamp = new Date()
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");
  for (let n = 0; ; n++) {
    const candidate = n === 0 ? name : `${stem}.${stamp}${n > 1 ? `-${n}` : ""}${ext}`;
    try {
      await stat(path.join(dir, candidate));
    } catch (err) {
      if (isMissing(err)) return candidate;
      throw err;
    }
  }
}

export interface FolderState {
  folder: string;
  watching: boolean;
  /** What keeps files from being imported (a missing folder, no write access), or null. */
  problem: string | null;
  /** Files that cannot be read, with why. */
  unreadable: Array<{ file: string; error: string }>;
  lastScanAt: Date | null;
  /** Files seen but not taken yet: still being written, or settling. */
  waiting: Array<{ file: string; bytes: number; quietSeconds: number }>;
  lastFile: { file: string; outcome: ImportOutcome; at: Date; error?: string } | null;
}

export interface FolderImporter {
  start(): Promise<void>;
  /** Lists the folder and takes every candidate (the safety net); resolves when done. */
  rescan(): Promise<void>;
  stop(): Promise<void>;
  state(): FolderState;
  check(): WorkloadCheck;
}

export function makeFolderImporter(options: {
  dir: string;
  pool: Pool;
  directUrl: string;
  logger: Logger;
  /** Called once per file taken, with what became of it. */
  counted(outcome: ImportOutcome): void;
  incompleteGraceMs?: number;
}): FolderImporter {
  const dir = path.resolve(options.dir);
  const graceMs = options.incompleteGraceMs ?? INCOMPLETE_GRACE_MS;
  const log = options.logger.child({ component: "import", folder: dir });
  const session = makeDirectSession(options.directUrl, "import", { idleMs: SESSION_IDLE_MS });
  const tryLock = session.tryLock;
  /** Names to look at in the next pass. */
  const due = new Set<string>();
  /** Files looked at and not taken yet, with when they last changed (by this clock). */
  const seen = new Map<string, { size: number; mtimeMs: number; changedAt: number }>();
  /** Files to look at again at a time (incomplete, settling, changed while read). */
  const later = new Map<string, number>();
  /** Files taken whose move failed: `size:mtime` of the file as it was. */
  const unmovable = new Map<string, { stamp: string; to: string; errorText?: string }>();
  /** Files that could not be read, with why (cleared once read, or gone). */
  const fileErrors = new Map<string, string>();
  let watcher: FSWatcher | null = null;
  let watchedIno: number | null = null;
  let timer: NodeJS.Timeout | null = null;
  let running: Promise<void> | null = null;
  let stopped = true;
  let problem: string | null = null;
  let lastScanAt: Date | null = null;
  let lastFile: FolderState["lastFile"] = null;

  function setProblem(next: string | null) {
    if (next !== null && next !== problem) log.error(next);
    if (next === null && problem !== null) log.info("the import folder is usable again");
    problem = next;
  }

  function kick() {
    if (stopped || running) return;
    running = drain().finally(() => {
      running = null;
      if (due.size > 0) kick();
    });
  }

  function recheck(name: string, afterMs: number) {
    later.set(name, Date.now() + Math.max(0, afterMs));
    arm();
  }

  function arm() {
    if (timer) clearTimeout(timer);
    timer = null;
    if (stopped || later.size === 0) return;
    const next = Math.min(...later.values());
    timer = setTimeout(
      () => {
        timer = null;
        const now = Date.now();
        for (const [name, at] of later) {
          if (at <= now) {
            later.delete(name);
            due.add(name);
          }
        }
        arm();
        kick();
      },
      Math.max(0, next - Date.now()),
    );
    timer.unref();
  }

  async function drain() {
    while (due.size > 0 && !stopped) {
      const names = [...due].sort();
      due.clear();
      try {
        for (const name of names) {
          if (stopped) return;
          try {
            await take(name);
            fileErrors.delete(name);
          } catch (err) {
            // One file the reactor cannot read (permissions, an I/O error) stays where it
            // is and is tried again at the next rescan; the other files go on.
            if (!isFileError(err)) throw err;
            const message = `cannot read ${name}: ${(err as Error).message}`;
            if (fileErrors.get(name) !== message) log.warn({ file: name }, message);
            fileErrors.set(name, message);
          }
        }
      } catch (err) {
        // The database (or the folder) failed mid-pass. Files stay where they are; the
        // next rescan takes them again.
        log.warn({ err: (err as Error).message }, "import pass failed; the next rescan retries");
        return;
      }
    }
  }

  /** Looks at one file and imports it if it is whole; otherwise says when to look again. */
  async function take(name: string) {
    const file = path.join(dir, name);
    let st: Stats;
    try {
      st = await lstat(file);
    } catch (err) {
      if (!isMissing(err)) throw err;
      gone(name);
      return;
    }
    if (st.isSymbolicLink()) {
      // A link could make the reactor read (and quote in an error file) a file the
      // producer may not read itself: refused unread, moved out of the way.
      const taken = await tryLock(lockKey(name), () =>
        settle(name, {
          outcome: "failed",
          fileName: name,
          sha256: "",
          fileId: null,
          orders: { inserted: 0, updated: 0, unchanged: 0 },
          error: "a symbolic link is not imported: put the file itself in the folder",
        }),
      );
      if (taken.locked) forget(name);
      return;
    }
    // A folder, a FIFO or a device with an .xml name is not a document: never opened.
    if (!st.isFile()) return;
    const now = Date.now();
    const prev = seen.get(name);
    const changed = !prev || prev.size !== st.size || prev.mtimeMs !== st.mtimeMs;
    const entry = { size: st.size, mtimeMs: st.mtimeMs, changedAt: changed ? now : prev.changedAt };
    seen.set(name, entry);
    const quietMs = now - entry.changedAt;
    const stamp = `${st.size}:${st.mtimeMs}`;

    const stuck = unmovable.get(name);
    if (stuck?.stamp === stamp) {
      // Taken already; only its move failed (an unwritable processed/ or failed/).
      await tryLock(lockKey(name), () => move(name, stuck.to, stuck.errorText));
      return;
    }
    if (st.size > MAX_DOCUMENT_BYTES) {
      if (quietMs < OVERSIZED_SETTLE_MS) return recheck(name, OVERSIZED_SETTLE_MS - quietMs);
      const taken = await tryLock(lockKey(name), async () => {
        const sha256 = await sha256Of(file);
        const error = `the file is ${st.size} bytes; at most ${MAX_DOCUMENT_BYTES} are imported from one document (split it)`;
        await settle(name, await recordRefusal(options.pool, { fileName: name, sha256, error }));
      });
      if (taken.locked) forget(name);
      return;
    }
    const whole = st.size > 0 && endsWithRoot(await readTail(file, st.size));
    if (!whole && quietMs < graceMs) return recheck(name, graceMs - quietMs);

    const taken = await tryLock(lockKey(name), async () => {
      let content: Buffer;
      try {
        content = await readFile(file);
        const after = await stat(file);
        if (after.size !== content.length || after.mtimeMs !== st.mtimeMs) return "changed";
      } catch (err) {
        if (isMissing(err)) return "gone";
        throw err;
      }
      const result = await importDocument(options.pool, { fileName: name, content });
      if (result.outcome === "failed" && !whole) {
        result.error = `${result.error} (the file does not end with </Orders> and did not change for ${Math.round(graceMs / 1000)} s: was it still being written? Write it under a .tmp name and rename it when complete)`;
      }
      await settle(name, result);
      return "done";
    });
    // Not locked: another replica is taking it, and moves it when done.
    if (!taken.locked || taken.value !== "changed") forget(name);
    else recheck(name, CHANGED_RETRY_MS);
  }

  /** Done looking at a file for now (taken, or another replica's). */
  function forget(name: string) {
    seen.delete(name);
    fileErrors.delete(name);
    later.delete(name);
  }

  /** The file is gone from the folder: nothing about it is kept. */
  function gone(name: string) {
    forget(name);
    unmovable.delete(name);
  }

  /** Records what became of a file and moves it out of the way. */
  async function settle(name: string, result: ImportResult) {
    options.counted(result.outcome);
    lastFile = {
      file: name,
      outcome: result.outcome,
      at: new Date(),
      ...(result.error ? { error: result.error } : {}),
    };
    if (result.outcome === "failed") {
      log.warn({ file: name, fileId: result.fileId, error: result.error }, "import file refused");
      await move(name, FAILED_DIR, `${result.error}\n`);
    } else {
      log.info(
        {
          file: name,
          fileId: result.fileId,
          outcome: result.outcome,
          orders: result.orders,
          ...(result.duplicateOf ? { duplicateOf: result.duplicateOf.fileName } : {}),
        },
        result.outcome === "imported"
          ? "import file imported"
          : "import file is a duplicate of one imported before",
      );
      await move(name, PROCESSED_DIR);
    }
  }

  /** Moves a file to processed/ or failed/ (with its error beside it); a failure is a problem, not a throw. */
  async function move(name: string, to: string, errorText?: string) {
    const from = path.join(dir, name);
    const target = path.join(dir, to);
    try {
      const free = await freeName(target, name);
      if (errorText !== undefined)
        await writeFile(path.join(target, `${free}.error.txt`), errorText);
      await rename(from, path.join(target, free));
      unmovable.delete(name);
    } catch (err) {
      const st = await lstat(from).catch(() => null);
      // Gone: another replica (or a person) moved it.
      if (!st) return;
      unmovable.set(name, { stamp: `${st.size}:${st.mtimeMs}`, to, errorText });
      setProblem(`cannot move ${name} to ${to}/: ${(err as Error).message}`);
    }
  }

  async function ensureFolder() {
    const st = await stat(dir);
    if (!st.isDirectory()) throw new Error(`${dir} is not a folder`);
    await access(dir, constants.R_OK | constants.W_OK | constants.X_OK);
    await mkdir(path.join(dir, PROCESSED_DIR), { recursive: true });
    await mkdir(path.join(dir, FAILED_DIR), { recursive: true });
    if (watcher && watchedIno !== st.ino) {
      // The folder was replaced (a remount): the old watch sees nothing any more.
      watcher.close();
      watcher = null;
    }
    if (!watcher) {
      watcher = watch(dir, { persistent: false }, (_event, filename) => {
        if (filename === null) {
          void rescan();
          return;
        }
        if (!isCandidate(filename)) return;
        due.add(filename);
        kick();
      });
      watchedIno = st.ino;
      watcher.on("error", (err) => {
        watcher?.close();
        watcher = null;
        setProblem(`watching ${dir} failed (${err.message}); the rescan still imports`);
      });
    }
  }

  async function rescan() {
    if (stopped) return;
    lastScanAt = new Date();
    let names: string[];
    try {
      await ensureFolder();
      names = await readdir(dir);
    } catch (err) {
      setProblem(
        isMissing(err)
          ? `IMPORT_DIR ${dir} does not exist; files are imported once it does`
          : `IMPORT_DIR ${dir} cannot be used: ${(err as Error).message}`,
      );
      return;
    }
    if (unmovable.size === 0) setProblem(null);
    const present = new Set(names.filter(isCandidate));
    for (const name of new Set([...seen.keys(), ...unmovable.keys()])) {
      if (!present.has(name)) gone(name);
    }
    for (const name of present) if (!later.has(name)) due.add(name);
    kick();
    await running;
  }

  return {
    async start() {
      stopped = false;
      await rescan();
      log.info({ watching: watcher !== null }, "watching the import folder");
    },
    rescan,
    async stop() {
      stopped = true;
      watcher?.close();
      watcher = null;
      if (timer) clearTimeout(timer);
      timer = null;
      await running;
      await session.close();
    },
    state() {
      const now = Date.now();
      return {
        folder: dir,
        watching: watcher !== null,
        problem,
        unreadable: [...fileErrors.entries()].map(([file, error]) => ({ file, error })),
        lastScanAt,
        waiting: [...seen.entries()].map(([file, s]) => ({
          file,
          bytes: s.size,
          quietSeconds: Math.round((now - s.changedAt) / 1000),
        })),
        lastFile,
      };
    },
    check() {
      const [unreadable] = fileErrors.values();
      const output = problem ?? unreadable;
      return output
        ? { name: "folder", status: "warn", observedValue: false, output }
        : { name: "folder", status: "pass", observedValue: true };
    },
  };
}
