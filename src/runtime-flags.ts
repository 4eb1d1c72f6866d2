// How the service's Node runs (package.json's start script and the Dockerfile's CMD pass
// these; test/packaging.test.ts keeps the three in step, and the bench starts replicas
// with them). Measured with `npm run bench` (memory.replica, 100,000-order backlog):
// default flags 104 MiB idle and 204 MiB peak; these 86 MiB and 103 MiB, at the same
// drain rate. A 2 MiB young generation is collected more often but stays small, and
// optimize-for-size makes V8 grow the heap less eagerly. Neither caps the heap, so a
// backlog of large orders slows down rather than running out of memory.
export const NODE_FLAGS = ["--max-semi-space-size=2", "--optimize-for-size"] as const;
