// The worker thread of parse.ts: reads one document off the event loop and answers once.
import { parentPort, workerData } from "node:worker_threads";
import { type PrepareInput, prepareDocument } from "./parse.js";

parentPort?.postMessage(prepareDocument(workerData as PrepareInput));
