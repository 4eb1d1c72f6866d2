// How the service's Node runs (package.json's start script and the Dockerfile's CMD pass
// these; test/packaging.test.ts keeps the three in step, and the bench starts replicas
// with them). Measured with the bench's memory.replica (100,000-order backlog) and its
// webhook drain, one replica (default flags on 2026-12-03, the rest on 2026-12-04):
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
