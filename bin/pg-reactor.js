#!/usr/bin/env node
// `npx pg-reactor …`: runs the TypeScript CLI through tsx, with no build step.
import { register } from "tsx/esm/api";

register();
await import("../src/cli.ts");
