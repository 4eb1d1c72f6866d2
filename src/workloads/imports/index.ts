// Custom Store XML order import as one source: a folder watch (IMPORT_DIR), an admin route
// (POST /admin/imports) and a CLI command (`pg-reactor import <file>`), all three through
// importDocument. It writes orders_inbox; the uploads workload takes over through the
// usual NOTIFY.
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { Counter } from "prom-client";
import type { SourceModule } from "../module.js";
import { makeFolderImporter } from "./folder.js";
import { type ImportOutcome, importDocument, MAX_DOCUMENT_BYTES } from "./import.js";
import { registerImportRoute } from "./route.js";

const OUTCOMES: readonly ImportOutcome[] = ["imported", "duplicate", "failed"];

export const importsModule: SourceModule = {
  name: "imports",
  create(ctx) {
    const filesTotal = new Counter({
      name: "reactor_import_files_total",
      help: "XML order documents taken (IMPORT_DIR files and POST /admin/imports), by outcome: imported, duplicate, failed.",
      labelNames: ["outcome"] as const,
      registers: [ctx.metrics.registry],
    });
    for (const outcome of OUTCOMES) filesTotal.inc({ outcome }, 0);
    const counted = (outcome: ImportOutcome) => filesTotal.inc({ outcome });
    const folder = ctx.env.importDir
      ? makeFolderImporter({
          dir: ctx.env.importDir,
          pool: ctx.pool,
          directUrl: ctx.directDatabaseUrl,
          logger: ctx.logger,
          counted,
        })
      : null;
    return {
      adminRoutes(admin) {
        registerImportRoute(admin, { pool: ctx.pool, logger: ctx.logger, counted });
      },
      jobs: folder
        ? [
            {
              name: "import folder rescan",
              intervalMs: () => ctx.settings.poll_interval_seconds * 1000,
              run: folder.rescan,
            },
          ]
        : [],
      async afterStart() {
        await folder?.start().catch((err: Error) => {
          ctx.logger.error({ err: err.message }, "import folder start failed");
        });
      },
      async stop() {
        await folder?.stop();
      },
      checks: () => (folder ? [folder.check()] : []),
      async status() {
        return folder ? { ...folder.state() } : { folder: "off (IMPORT_DIR is not set)" };
      },
    };
  },
  cli(program, kit) {
    program
      .command("import <file>")
      .description(
        "import a Custom Store order XML file into orders_inbox, like a file dropped in IMPORT_DIR (the file is not moved)",
      )
      .action((file: string) =>
        kit.withPool(async (pool) => {
          const st = await stat(file).catch((err: Error) =>
            kit.fail(`cannot read ${file}: ${err.message}`),
          );
          if (!st.isFile()) kit.fail(`${file} is not a file`);
          const size = st.size;
          if (size > MAX_DOCUMENT_BYTES) {
            kit.fail(
              `${file} is ${size} bytes; at most ${MAX_DOCUMENT_BYTES} are imported from one document (split it)`,
            );
          }
          const result = await importDocument(pool, {
            fileName: path.basename(file),
            content: await readFile(file),
          });
          if (result.outcome === "failed") kit.fail(`${file} refused: ${result.error}`);
          kit.print(result);
        }),
      );
  },
};
