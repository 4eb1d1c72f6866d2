// The product version, from package.json, for /status and the outbound user-agent.
import { readFileSync } from "node:fs";

export const VERSION: string = (
  JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
    version: string;
  }
).version;

export const USER_AGENT = `pg-reactor/${VERSION}`;
