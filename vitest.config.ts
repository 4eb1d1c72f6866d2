import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/helpers/global-setup.ts"],
    // Real databases, real HTTP servers, child processes: generous, never relied upon.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    // Two cores: two files at a time keeps timing-sensitive reactors from starving.
    maxWorkers: 2,
    reporters: ["default"],
  },
});
