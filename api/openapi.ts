import { z } from 'zod';
import { IDEMPOTENCY_HEADER, RETENTION_HOURS } from './idempotency';
import { errorReply, routes, standardReplies, type RouteSpec } from './schemas';

type Json = Record<string, unknown>;

function jsonSchema(schema: z.ZodType, io: 'input' | 'output'): Json {
  const s = z.toJSONSchema(schema, { io, target: 'draft-2020-12', unrepresentable: 'any' }) as Json;
  delete s.$schema;
  return s;
}

const STATUS_TEXT: Record<number, string> = {
  200: 'OK',
  201: 'Created',
  202: 'Accepted',
  400: 'Invalid input (INVALID_INPUT, naming the field)',
  401: 'No or bad bearer token (UNAUTHORIZED)',
  403: 'Operators only (FORBIDDEN)',
  404: 'Unknown, or another tenant’s (NOT_FOUND)',
  409: 'Conflict: CONFLICT, ALREADY_MIGRATING, INSUFFICIENT_CAPACITY, WRONG_STATE, NO_MATCHING_SERVER, TARGET_MISMATCH, HOST_HAS_VMS, HOST_MIGRATING, IDEMPOTENCY_KEY_IN_USE',
  413: 'Body larger than the limit (PAYLOAD_TOO_LARGE)',
  415: 'Body is not application/json (UNSUPPORTED_MEDIA_TYPE)',
  422: 'Idempotency-Key already used for another request (IDEMPOTENCY_KEY_REUSED)',
  503: 'A backing service does not answer (UNAVAILABLE); try again',
};

const ACCESS_TEXT: Record<RouteSpec['access'], string> = {
  public: 'Anyone, no token.',
  operator: 'Operators only; a tenant token gets 403 (decided before any id is looked at, so it reveals nothing).',
  any: 'Operators and tenants; tenants see and touch only their own objects (others answer 404).',
};

/** The OpenAPI 3.1 document of the API, generated from the route catalog and its zod schemas. */
export function buildOpenApiDocument(): Json {
  const paths: Record<string, Record<string, Json>> = {};
  for (const [name, spec] of Object.entries(routes) as Array<[string, RouteSpec]>) {
    const path = spec.url.replace(/:([A-Za-z]+)/g, '{$1}');
    const parameters: Json[] = [];
    for (const [where, schema] of [
      ['path', spec.params],
      ['query', spec.query],
    ] as const) {
      if (!schema) continue;
      // Parameters as the server reads them: `limit` is an integer from 1 to 1000, not "a string of digits".
      const obj = jsonSchema(schema, 'output') as { properties?: Record<string, Json>; required?: string[] };
      for (const [pname, pschema] of Object.entries(obj.properties ?? {}))
        parameters.push({ name: pname, in: where, required: where === 'path' || (obj.required ?? []).includes(pname), schema: pschema });
    }
    if (spec.idempotent)
      parameters.push({
        name: 'Idempotency-Key',
        in: 'header',
        required: false,
        description: `A retry with the same key (same principal) gets the first answer and creates nothing twice; another request under the key gets 422. Kept ${RETENTION_HOURS} h.`,
        schema: { type: 'string', minLength: 1, maxLength: 200, pattern: '^[\\x21-\\x7e]+$' },
      });
    const responses: Record<string, Json> = {};
    for (const [status, schema] of Object.entries(standardReplies(spec))) {
      const type = schema === errorReply ? 'application/json' : (spec.contentType ?? 'application/json');
      responses[status] = {
        description: STATUS_TEXT[Number(status)] ?? 'Answer',
        content: { [type]: { schema: schema === errorReply ? { $ref: '#/components/schemas/Error' } : jsonSchema(schema, 'output') } },
      };
    }
    const operation: Json = {
      operationId: name,
      summary: spec.summary,
      description: [ACCESS_TEXT[spec.access], ...(spec.rules ?? []).map((r) => `\`${r.field}\`: ${r.message}.`)].join(' '),
      ...(spec.rules ? { 'x-dhm-rules': spec.rules } : {}),
      ...(parameters.length ? { parameters } : {}),
      ...(spec.body
        ? {
            requestBody: {
              required: !spec.bodyOptional,
              content: { 'application/json': { schema: jsonSchema(spec.body, 'input') } },
            },
          }
        : {}),
      responses,
      security: spec.access === 'public' ? [] : [{ bearer: [] }],
    };
    paths[path] = { ...(paths[path] ?? {}), [spec.method.toLowerCase()]: operation };
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'dhm API',
      version: '1',
      description:
        'Live migration of dedicated hosts. Errors are `{"error": {"code", "message", "field"?}}`; bad input never changes anything. ' +
        `POST and DELETE accept the \`${IDEMPOTENCY_HEADER}\` header. A method a path does not serve answers 405 with an \`Allow\` header. ` +
        'Rules that relate fields or depend on who asks, which JSON Schema cannot state, are listed as `x-dhm-rules` (on a schema or an operation) and in the descriptions.',
    },
    servers: [{ url: 'http://127.0.0.1:7780' }],
    paths,
    components: {
      schemas: { Error: jsonSchema(errorReply, 'output') },
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'The operator token (DHM_OPERATOR_TOKEN) or a tenant token' } },
    },
  };
}
