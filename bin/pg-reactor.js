#!/usr/bin/env node
// `npx pg-reactor …`: the compiled CLI (dist/, built by `npm run build` and by the image)
// when it is at least as new as the TypeScript sources; else, in a development checkout
// where someone just edited src/, the sources themselves through tsx.
import { existsSync, readdirSync, statSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const compiled = `${root}dist/cli.js`;
const sources = `${root}src`;

/** The newest modification time of the .ts files under `dir`. */
function newestSource(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile() && entry.name.endsWith(".ts")) {
      newest = Math.max(newest, statSync(`${entry.parentPath}/${entry.name}`).mtimeMs);
    }
  }
  return newest;
}

/** tsx is a development dependency: absent from a production install. */
async function tsxRegister() {
  try {
    return (await import("tsx/esm/api")).register;
  } catch {
    return null;
  }
}

const fresh =
  existsSync(compiled) &&
  (!existsSync(sources) || statSync(compiled).mtimeMs >= newestSource(sources));
const register = fresh ? null : await tsxRegister();
if (register) {
  register();
  await import("../src/cli.ts");
} else if (existsSync(compiled)) {
  await import("../dist/cli.js");
} else {
  process.stderr.write("pg-reactor: dist/cli.js is missing: run `npm run build` first\n");
  process.exit(1);
}
