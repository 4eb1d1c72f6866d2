// Reading a document (decode, check, parse, build the rows) costs the CPU about 0.1 ms per
// order. On the event loop, a 10,000-order file would stall health probes, lease renewals
// and every workload for a second or more: documents over INLINE_MAX_BYTES are read on a
// worker thread of their own, and only the rows (one JSON string) come back.
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { decodeXml, parseCustomStoreXml } from "./custom-store-xml.js";

/** A document this small is read on the event loop (a few ms); a larger one on a worker. */
export const INLINE_MAX_BYTES = 256 * 1024;

export type Prepared =
  | { ok: true; rows: string; count: number }
  | { ok: false; error: string; line?: number; column?: number };

/** What the worker is given. */
export interface PrepareInput {
  bytes: Uint8Array;
  maxOrders?: number;
}

/** Decodes and reads a document into the JSON rows of the upsert, or says why it is refused. */
export function prepareDocument({ bytes, maxOrders }: PrepareInput): Prepared {
  const text = decodeXml(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  if (!text.ok) return text;
  const parsed = parseCustomStoreXml(text.text, { maxOrders });
  if (!parsed.ok) return parsed;
  const rows = parsed.orders.map((o) => ({
    order_key: o.orderKey,
    order_number: o.orderNumber,
    status: o.status,
    payload: o.payload,
  }));
  return { ok: true, rows: JSON.stringify(rows), count: rows.length };
}

/** The worker, as compiled JavaScript (production) or TypeScript source (tests, tsx). */
function startWorker(input: PrepareInput): Worker {
  const entry = new URL(`./parse-worker${extension(import.meta.url)}`, import.meta.url);
  if (!entry.href.endsWith(".ts")) return new Worker(entry, { workerData: input });
  // Running from source: the worker thread registers tsx's loader before it loads the entry.
  const tsx = createRequire(import.meta.url)
    .resolve("tsx/esm/api")
    .replace(/\.cjs$/, ".mjs");
  const code = `import(${JSON.stringify(pathToFileURL(tsx).href)}).then((m) => { m.register(); return import(${JSON.stringify(entry.href)}); })`;
  return new Worker(code, { eval: true, workerData: input });
}

/** ".js" or ".ts": the extension this module was loaded with. */
function extension(url: string): string {
  return url.endsWith(".ts") ? ".ts" : ".js";
}

/** prepareDocument, on a worker thread for a document over INLINE_MAX_BYTES. */
export async function readDocument(input: PrepareInput): Promise<Prepared> {
  if (input.bytes.byteLength <= INLINE_MAX_BYTES) return prepareDocument(input);
  const worker = startWorker(input);
  try {
    return await new Promise<Prepared>((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
      worker.once("exit", (code) =>
        reject(new Error(`the document reader stopped (exit code ${code}) before it answered`)),
      );
    });
  } finally {
    await worker.terminate();
  }
}
