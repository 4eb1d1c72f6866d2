// POST /admin/imports: a Custom Store XML document as the request body, imported exactly
// as a file dropped in IMPORT_DIR would be. 200 with what was imported (or that the same
// bytes were imported before); 400 saying where a refused document went wrong.
import type { FastifyInstance } from "fastify";
import type { Pool } from "../../db/pool.js";
import { NO_NUL } from "../../http/validation.js";
import type { Logger } from "../../logger.js";
import { type ImportOutcome, importDocument, MAX_DOCUMENT_BYTES } from "./import.js";

const XML_TYPES = ["application/xml", "text/xml"];

const unsupported = {
  statusCode: 415,
  error: "Unsupported Media Type",
  message: `send the XML document as the body with Content-Type: ${XML_TYPES.join(" or ")}`,
};

export function registerImportRoute(
  admin: FastifyInstance,
  options: { pool: Pool; logger: Logger; counted(outcome: ImportOutcome): void },
): void {
  // A scope of its own: the XML parsers and the larger body limit apply to this route only.
  void admin.register(async (scope) => {
    scope.addContentTypeParser(
      XML_TYPES,
      { parseAs: "buffer", bodyLimit: MAX_DOCUMENT_BYTES },
      (_req, body, done) => done(null, body),
    );
    // Fastify's own refusals of this route, with what to send instead.
    scope.setErrorHandler((err: { code?: string; statusCode?: number }, _req, reply) => {
      if (err.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") {
        return reply.code(415).send(unsupported);
      }
      if (err.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
        return reply.code(413).send({
          statusCode: 413,
          error: "Payload Too Large",
          message: `the document is larger than ${MAX_DOCUMENT_BYTES} bytes (50 MiB), the most one import takes: split it`,
        });
      }
      throw err;
    });
    scope.post(
      "/imports",
      {
        bodyLimit: MAX_DOCUMENT_BYTES,
        schema: {
          querystring: {
            type: "object",
            additionalProperties: false,
            properties: {
              file_name: { type: "string", minLength: 1, maxLength: 255, pattern: NO_NUL },
            },
          },
        },
      },
      async (req, reply) => {
        if (!Buffer.isBuffer(req.body)) return reply.code(415).send(unsupported);
        const fileName = (req.query as { file_name?: string }).file_name ?? "POST /admin/imports";
        const result = await importDocument(options.pool, { fileName, content: req.body });
        options.counted(result.outcome);
        const log = { file: fileName, fileId: result.fileId, outcome: result.outcome };
        if (result.outcome === "failed") {
          options.logger.warn({ ...log, error: result.error }, "import document refused");
          // `error` is the refusal in the result; in the reply it is the status, as in every 400.
          return reply.code(400).send({
            ...result,
            statusCode: 400,
            error: "Bad Request",
            message: result.error,
          });
        }
        options.logger.info({ ...log, orders: result.orders }, "import document taken");
        return result;
      },
    );
  });
}
