import { z } from 'zod';
import { idSchema } from '../../common/fleet';
import { PHASES } from '../../common/migration';

/** Building blocks every resource's schemas share: free text, ids, times, amounts, query parameters, the error reply. */

// C0/C1 control characters (terminal escapes in a CLI listing, NUL that Postgres cannot store) and lone surrogates
// (not representable in UTF-8) are refused; everything else, quotes and SQL included, is stored verbatim. A pattern
// rather than a refinement, so the API document states the rule (a `u`-mode pattern: a lone surrogate is one unit).
const PRINTABLE_TEXT = /^[^\u0000-\u001f\u007f-\u009f\uD800-\uDFFF]*$/u;

/** Free text typed by people (names): 1..max characters, no control characters, well-formed Unicode. */
export const textSchema = (max: number) => z.string().min(1).max(max).regex(PRINTABLE_TEXT, 'must not contain control characters or lone surrogates');

export { idSchema };

export const isoTime = z.string().describe('ISO 8601 timestamp');

export const phaseSchema = z.enum(PHASES);

export const intAmount = z.number().int();

export const resourcesView = z.object({ vcpus: intAmount, memoryMiB: intAmount, diskGiB: intAmount });

/** An integer query parameter given as decimal digits. */
export const queryInt = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d{1,16}$/, 'must be a non-negative integer')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));

/** A boolean query parameter; the route reads it as `=== 'true'` (a transform would hide the enum from the document). */
export const queryBool = z.enum(['true', 'false']);

export const emptyQuery = z.object({}).strict();

export const errorReply = z.object({
  error: z.object({
    code: z.string().describe('INVALID_INPUT | UNAUTHORIZED | FORBIDDEN | NOT_FOUND | CONFLICT | ALREADY_MIGRATING | ...'),
    message: z.string(),
    field: z.string().optional().describe('the input field at fault, dotted'),
    details: z.record(z.string(), z.unknown()).optional(),
  }),
});
