// The IMPORT_DIR watch (docs/architecture.md §1): an XML file is imported the moment it
// lands (file-system events), and a rescan every poll_interval_seconds catches what an
// event missed (network mounts and synced drives often send none). A file is read only
// when it is whole: its last bytes close the <Orders> root and it did not change while
// it was read. One that stays open-ended is refused after INCOMPLETE_GRACE_MS of quiet.
// Each file is taken under an advisory lock on its name, held until it has been moved
// out, so replicas sharing the folder import it once. The lock is taken on a direct
// connection (see db/direct-lock.ts); the import itself runs on the pool.
import { isUtf8 } from "node:buffer";
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
/** A file whose import failed (the database away, say) is tried again after 1 s, 2 s, … up to this. */
const RETRY_MAX_MS = 60_000;
/** The longest file name (in bytes) Linux, macOS and Windows file systems take. */
const MAX_NAME_BYTES = 255;
const ERROR_SUFFIX = ".error.txt";

/** `*.xml` (any case), never a dot-file: producers write `.name.xml`, `name.tmp` or `name.part` and rename. */
export function isCandidate(name: string): boolean {
  return !name.startsWith(".") && name.toLowerCase().endsWith(".xml");
}

/** The document's last non-blank bytes close the <Orders> root: it was written to the end. */
export function endsWithRoot(tail: Buffer): boolean {
  return /(?:<\/Orders\s*>|<Orders\s*\/>)\s*$/.test(tail.toString("latin1"));
}

/** `stem + suffix`, the stem cut (by whole characters) so the name fits MAX_NAME_BYTES. */
export function fitName(stem: string, suffix: string): string {
  const chars = [...stem];
  while (chars.length > 1 && Buffer.byteLength(chars.join("") + suffix) > MAX_NAME_BYTES) {
    chars.pop();
  }
  return chars.join("") + suffix;
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
    const candidate = n === 0 ? name : fitName(stem, `.${stamp}${n > 1 ? `-${n}` : ""}${ext}`);
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
  /** Files that cannot be read or imported (tried again), or are badly named, with why. */
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
  /** Files taken whose move failed: `size:mtime` of the file as it was, and why. */
  const unmovable = new Map<
    string,
    { stamp: string; ino: number; to: string; errorText?: string; error: string }
  >();
  /** Files that could not be read, with why (cleared once read, or gone). */
  const fileErrors = new Map<string, string>();
  /** Files whose import failed (not refused: the database away, say), tried again with backoff. */
  const failures = new Map<string, { error: string; attempts: number }>();
  /** Names that are not UTF-8 (from another system's encoding): reported, not taken. */
  let badNames: string[] = [];
  let watcher: FSWatcher | null = null;
  /** The watched folder's identity (device, inode, birth time): see ensureFolder. */
  let watchedId: string | null = null;
  let timer: NodeJS.Timeout | null = null;
  let running: Promise<void> | null = null;
  let stopped = true;
  /** What keeps the whole folder from being used (missing, not writable, not watchable). */
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
      for (const name of names) {
        if (stopped) return;
        try {
          await take(name);
          fileErrors.delete(name);
          failures.delete(name);
        } catch (err) {
          failed(name, err);
        }
      }
    }
  }

  /**
   * One file could not be taken. It stays where it is and the other files go on: a file
   * the reactor cannot read is tried at the next rescan; one whose import failed (the
   * database away, a timeout) again after a backoff.
   */
  function failed(name: string, err: unknown) {
    if (isFileError(err)) {
      const message = `cannot read ${name}: ${(err as Error).message}`;
      if (fileErrors.get(name) !== message) log.warn({ file: name }, message);
      fileErrors.set(name, message);
      return;
    }
    const before = failures.get(name);
    const error = `cannot import ${name}: ${(err as Error).message}`;
    const attempts = (before?.attempts ?? 0) + 1;
    const retryMs = Math.min(RETRY_MAX_MS, 1000 * 2 ** (attempts - 1));
    if (before?.error !== error) {
      log.warn({ file: name, retryInSeconds: retryMs / 1000 }, `${error}; tried again later`);
    }
    failures.set(name, { error, attempts });
    recheck(name, retryMs);
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
        settle(name, st.ino, {
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
    if (stuck?.stamp === stamp && stuck.ino === st.ino) {
      // Taken already; only its move failed (an unwritable processed/ or failed/).
      await tryLock(lockKey(name), () => move(name, st.ino, stuck.to, stuck.errorText));
      return;
    }
    if (st.size > MAX_DOCUMENT_BYTES) {
      if (quietMs < OVERSIZED_SETTLE_MS) return recheck(name, OVERSIZED_SETTLE_MS - quietMs);
      const taken = await tryLock(lockKey(name), async () => {
        const sha256 = await sha256Of(file);
        const error = `the file is ${st.size} bytes; at most ${MAX_DOCUMENT_BYTES} are imported from one document (split it)`;
        const result = await recordRefusal(options.pool, { fileName: name, sha256, error });
        await settle(name, st.ino, result);
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
        const after = await lstat(file);
        const same =
          after.ino === st.ino && after.size === content.length && after.mtimeMs === st.mtimeMs;
        if (!same) return "changed";
      } catch (err) {
        if (isMissing(err)) return "gone";
        throw err;
      }
      const result = await importDocument(options.pool, { fileName: name, content });
      if (result.outcome === "failed" && !whole) {
        result.error = `${result.error} (the file does not end with </Orders> and did not change for ${Math.round(graceMs / 1000)} s: was it still being written? Write it under a .tmp name and rename it when complete)`;
      }
      await settle(name, st.ino, result);
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
    failures.delete(name);
  }

  /** Records what became of a file and moves it out of the way. */
  async function settle(name: string, ino: number, result: ImportResult) {
    options.counted(result.outcome);
    lastFile = {
      file: name,
      outcome: result.outcome,
      at: new Date(),
      ...(result.error ? { error: result.error } : {}),
    };
    if (result.outcome === "failed") {
      log.warn({ file: name, fileId: result.fileId, error: result.error }, "import file refused");
      await move(name, ino, FAILED_DIR, `${result.error}\n`);
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
      await move(name, ino, PROCESSED_DIR);
    }
  }

  /**
   * Moves the file that was read (inode `ino`) to processed/ or failed/, with its error
   * beside it. A different file now at that path (renamed over it by a producer while it
   * was imported) is left, or put back, for its own import. A failure is a problem on
   * imports:folder, not a throw: the move alone is tried again.
   */
  async function move(name: string, ino: number, to: string, errorText?: string) {
    const from = path.join(dir, name);
    const target = path.join(dir, to);
    try {
      const now = await lstat(from).catch(() => null);
      // Gone: another replica (or a person) moved it. Replaced: the new file is taken anew.
      if (!now || now.ino !== ino) return replaced(name, now !== null);
      const kind = await lstat(target);
      // A link would make the reactor write where the producer points it.
      if (!kind.isDirectory()) {
        throw new Error(`${to}/ must be a folder inside IMPORT_DIR, not a link or a file`);
      }
      const free = await freeName(target, name);
      if (errorText !== undefined) {
        const errorName = await freeName(target, fitName(free, ERROR_SUFFIX));
        await writeFile(path.join(target, errorName), errorText);
      }
      await rename(from, path.join(target, free));
      const moved = await lstat(path.join(target, free));
      if (moved.ino !== ino) {
        // Renamed over in the instant between the check and the move: put it back.
        await rename(path.join(target, free), path.join(dir, await freeName(dir, name)));
        return replaced(name, true);
      }
      if (unmovable.delete(name)) log.info({ file: name, to }, "import file moved after all");
    } catch (err) {
      const st = await lstat(from).catch(() => null);
      if (!st || st.ino !== ino) return replaced(name, st !== null);
      const error = `cannot move ${name} to ${to}/: ${(err as Error).message}`;
      if (unmovable.get(name)?.error !== error) log.error({ file: name }, error);
      unmovable.set(name, { stamp: `${st.size}:${st.mtimeMs}`, ino, to, errorText, error });
    }
  }

  /** The file taken is no longer at its name; a new one there (if any) is looked at anew. */
  function replaced(name: string, present: boolean) {
    unmovable.delete(name);
    if (present) {
      log.info(
        { file: name },
        "import file was replaced while it was imported; the new one is next",
      );
      recheck(name, 0);
    }
  }

  async function ensureFolder() {
    const st = await stat(dir);
    if (!st.isDirectory()) throw new Error(`${dir} is not a folder`);
    await access(dir, constants.R_OK | constants.W_OK | constants.X_OK);
    // Not recursive: if IMPORT_DIR vanished a moment ago (an unmounted share), it is not
    // made again on the local disk.
    for (const sub of [PROCESSED_DIR, FAILED_DIR]) {
      await mkdir(path.join(dir, sub)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "EEXIST") throw err;
      });
    }
    // An inode number is reused at once: a folder deleted and made again often has the
    // old one. Its birth time tells them apart where the file system keeps one.
    const id = `${st.dev}:${st.ino}:${st.birthtimeMs}`;
    if (watcher && watchedId !== id) {
      // The folder was replaced (a remount, or deleted and made again): the old watch
      // sees nothing any more.
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
      watchedId = id;
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
      // Read as bytes: a name from another system's encoding is reported, not lost.
      const raw = await readdir(dir, { encoding: "buffer" });
      names = raw.filter((b) => isUtf8(b)).map((b) => b.toString("utf8"));
      badNames = raw
        .filter((b) => !isUtf8(b))
        .map((b) => b.toString("latin1"))
        .filter(isCandidate);
    } catch (err) {
      if (isMissing(err) && watcher) {
        // The watch died with the folder; one made on the folder that comes back (even
        // with the same inode number) is a new one.
        watcher.close();
        watcher = null;
      }
      setProblem(
        isMissing(err)
          ? `IMPORT_DIR ${dir} does not exist; files are imported once it does`
          : `IMPORT_DIR ${dir} cannot be used: ${(err as Error).message}`,
      );
      return;
    }
    setProblem(null);
    const present = new Set(names.filter(isCandidate));
    for (const name of new Set([...seen.keys(), ...unmovable.keys(), ...failures.keys()])) {
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
        problem: problem ?? [...unmovable.values()][0]?.error ?? null,
        unreadable: troubles(),
        lastScanAt,
        waiting: [...seen.entries()]
          .filter(([file]) => !failures.has(file) && !fileErrors.has(file))
          .map(([file, s]) => ({
            file,
            bytes: s.size,
            quietSeconds: Math.round((now - s.changedAt) / 1000),
          })),
        lastFile,
      };
    },
    check() {
      const output = problem ?? [...unmovable.values()][0]?.error ?? troubles()[0]?.error;
      return output
        ? { name: "folder", status: "warn", observedValue: false, output }
        : { name: "folder", status: "pass", observedValue: true };
    },
  };

  /** Files that cannot be taken, with why: unreadable, failing to import, or badly named. */
  function troubles(): Array<{ file: string; error: string }> {
    return [
      ...[...fileErrors.entries()].map(([file, error]) => ({ file, error })),
      ...[...failures.entries()].map(([file, f]) => ({ file, error: f.error })),
      ...badNames.map((file) => ({
        file,
        error: `the name of ${JSON.stringify(file)} is not UTF-8 (read here as Latin-1): rename it`,
      })),
    ];
  }
}
