// `npm run gen:sql`: rewrites the generated SQL and README table from the settings the core and each workload declare.
import { readFile, writeFile } from "node:fs/promises";
import { ENV_DOCS, type EnvName } from "./config/env.js";
import { renderSettingsSql, renderSettingsTable } from "./reactor/settings-sql.js";
import { SETTINGS } from "./workloads/index.js";

export const SETTINGS_SQL_FILE = new URL("../sql/030_reactor_settings.sql", import.meta.url);
export const README_FILE = new URL("../README.md", import.meta.url);

export function renderEnvTable(): string {
  const rows = (Object.keys(ENV_DOCS) as EnvName[]).map(
    (name) => `| \`${name}\` | ${ENV_DOCS[name].default} | ${ENV_DOCS[name].doc} |`,
  );
  return ["| variable | default | meaning |", "| --- | --- | --- |", ...rows].join("\n");
}

/** Replaces the text between `<!-- name:start -->` and `<!-- name:end -->`. */
export function replaceBlock(text: string, name: string, body: string): string {
  const re = new RegExp(`(<!-- ${name}:start -->\\n)[\\s\\S]*?(\\n<!-- ${name}:end -->)`);
  if (!re.test(text)) throw new Error(`README has no ${name} block`);
  return text.replace(re, `$1${body}$2`);
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split("/").pop() ?? "")) {
  await writeFile(SETTINGS_SQL_FILE, renderSettingsSql(SETTINGS));
  let readme = await readFile(README_FILE, "utf8");
  readme = replaceBlock(readme, "settings-table", renderSettingsTable(SETTINGS));
  readme = replaceBlock(readme, "env-table", renderEnvTable());
  await writeFile(README_FILE, readme);
  process.stdout.write("wrote sql/030_reactor_settings.sql and README tables\n");
}
