// How the service's Node runs (package.json's start script and the Dockerfile's CMD pass
// these, and set NODE_ENV_DEFAULTS; test/packaging.test.ts keeps the three in step, and
// the bench starts replicas with them). Measured with the bench's memory.replica
// (100,000-order backlog) and its webhook drain, one replica (default flags on
// 2026-12-03, the rest on 2026-12-04):
//   default flags                      RSS 104 MiB idle, 204 MiB peak
//   --max-semi-space-size=2             91 / 170 MiB
//   + --optimize-for-size               87 / 104 MiB, webhooks 3,365/s (median of 3)
//   + --heap-growing-percent=30 (these) 90 / 111 MiB, webhooks 3,845/s (interleaved runs)
// A 2 MiB young generation is collected more often but stays small; growing the old
// generation by 30 % at a time (instead of V8's adaptive factor, up to 4x) keeps the peak
// down. optimize-for-size did the same but also slowed compiled code: about a fifth of
// the replica's CPU in a webhook drain went to it. Neither flag caps the heap, so a
// backlog of large orders slows down rather than running out of memory.
export const NODE_FLAGS = ["--max-semi-space-size=2", "--heap-growing-percent=30"] as const;

/**
 * Environment the service's Node starts with, unless the operator sets it. glibc gives
 * each thread that allocates (V8's and libuv's workers) an arena of its own, up to 8 per
 * core, and freed memory stays in them. Measured 2026-12-04 on an idle replica with
 * ShipStation configured (three runs each): private memory 39.1-42.8 MiB by default,
 * 35.6-36.5 with 2 arenas, 35.4-39.4 with 4 (RSS 87.9-92.6, 85.4-86.3, 85.2-89.4 MiB).
 * Webhook drains in interleaved runs: 6,999/s median of 9 by default, 6,359 of 6 with 2
 * arenas, 6,503 of 3 with 4, all within the runs' spread. 4 saves as much at idle as 2
 * did, with twice the arenas for the threads that allocate at once.
 */
export const NODE_ENV_DEFAULTS = { MALLOC_ARENA_MAX: "4" } as const;
