import fc from 'fast-check';

/**
 * Values that a JSON Schema (draft 2020-12, the subset an OpenAPI 3.1 document uses) accepts, as fast-check
 * arbitraries. It reads the document only: the point is to find what a client generated from the document would
 * send and the server would refuse. `x-dhm-rules` (rules relating fields, which JSON Schema cannot state) are
 * honoured because the document states them.
 */
export type JsonSchema = Record<string, any>;

export interface SchemaContext {
  /** Resolves `$ref: '#/components/schemas/X'`. */
  root: JsonSchema;
  /** Strings a caller may already know (ids of existing objects), mixed into strings that match their pattern. */
  known?: (schema: JsonSchema) => string[];
}

function resolve(schema: JsonSchema, ctx: SchemaContext): JsonSchema {
  if (typeof schema.$ref !== 'string') return schema;
  const path = schema.$ref.replace(/^#\//, '').split('/');
  let node: any = ctx.root;
  for (const part of path) node = node?.[part];
  if (!node) throw new Error(`unresolvable $ref ${schema.$ref}`);
  return resolve(node, ctx);
}

function stringArbitrary(s: JsonSchema, ctx: SchemaContext): fc.Arbitrary<string> {
  const min = s.minLength ?? 0;
  const max = s.maxLength ?? Math.max(min, 40);
  // Length in code points, as JSON Schema counts it.
  const fitsLength = (v: string) => {
    const n = [...v].length;
    return n >= min && n <= max;
  };
  let base: fc.Arbitrary<string>;
  if (typeof s.pattern === 'string') {
    const re = new RegExp(s.pattern, 'u');
    base = fc.stringMatching(re).filter(fitsLength);
  } else base = fc.string({ unit: 'grapheme', minLength: min, maxLength: Math.min(max, 60) }).filter(fitsLength);
  const known = (ctx.known?.(s) ?? []).filter((k) => fitsLength(k) && (typeof s.pattern !== 'string' || new RegExp(s.pattern, 'u').test(k)));
  return known.length ? fc.oneof({ arbitrary: fc.constantFrom(...known), weight: 3 }, { arbitrary: base, weight: 1 }) : base;
}

function numberArbitrary(s: JsonSchema, integer: boolean): fc.Arbitrary<number> {
  const lo =
    s.minimum ?? (s.exclusiveMinimum !== undefined ? s.exclusiveMinimum + (integer ? 1 : Number.EPSILON * Math.max(1, Math.abs(s.exclusiveMinimum))) : -1e6);
  const hi =
    s.maximum ?? (s.exclusiveMaximum !== undefined ? s.exclusiveMaximum - (integer ? 1 : Number.EPSILON * Math.max(1, Math.abs(s.exclusiveMaximum))) : 1e6);
  const min = Math.max(lo, integer ? Number.MIN_SAFE_INTEGER : -Number.MAX_VALUE);
  const max = Math.min(hi, integer ? Number.MAX_SAFE_INTEGER : Number.MAX_VALUE);
  if (integer) {
    // Bounds and small values are where validators disagree; mix them with the whole range.
    const edges = [min, max, Math.min(max, Math.max(min, 0)), Math.min(max, min + 1)].filter((v) => Number.isSafeInteger(v));
    return fc.oneof(fc.constantFrom(...edges), fc.integer({ min: Math.ceil(min), max: Math.floor(max) }));
  }
  return fc.oneof(fc.constantFrom(min, max), fc.double({ min, max, noNaN: true, noDefaultInfinity: true }));
}

/** A dotted path's value in `value`. */
const at = (value: unknown, path: string): any => path.split('.').reduce((o: any, p) => o?.[p], value);

/**
 * Makes a generated value satisfy the document's rules, as a client that read them would: `lessOrEqual` clamps the
 * field to its bound; `sumLessOrEqual` shares the bound out among the matching items (leaving out one it has no room
 * for);
 * `unique` renames repeated items (a suffix within the field's pattern of letters, digits and "-").
 */
function applyRules(value: Record<string, any>, rules: ReadonlyArray<any> | undefined): Record<string, any> {
  for (const r of rules ?? []) {
    if (r.rule === 'lessOrEqual') {
      const path = String(r.field).split('.');
      const holder = at(value, path.slice(0, -1).join('.')) ?? (path.length === 1 ? value : undefined);
      const leaf = path[path.length - 1]!;
      const bound = at(value, String(r.than));
      if (holder && typeof holder[leaf] === 'number' && typeof bound === 'number' && holder[leaf] > bound) holder[leaf] = bound;
    } else if (r.rule === 'sumLessOrEqual') {
      const items = at(value, String(r.items));
      const bound = at(value, String(r.than));
      if (!Array.isArray(items) || typeof bound !== 'number') continue;
      const matching = items.filter((i) => i && typeof i[r.field] === 'number' && Object.entries(r.where ?? {}).every(([k, v]) => i[k] === v));
      let left = bound;
      const dropped = new Set<unknown>();
      for (const [n, i] of matching.entries()) {
        // Each keeps at least 1 (its schema's minimum) while the bound allows; one the bound has no room for is left out.
        const share = Math.floor(left / (matching.length - n));
        if (share < 1) dropped.add(i);
        else if (i[r.field] > share) i[r.field] = share;
        if (!dropped.has(i)) left -= i[r.field];
      }
      for (let k = items.length - 1; k >= 0; k--) if (dropped.has(items[k])) items.splice(k, 1);
    } else if (r.rule === 'unique') {
      const items = at(value, String(r.items));
      if (!Array.isArray(items)) continue;
      const seen = new Set<unknown>();
      for (const [n, i] of items.entries()) {
        if (!i || typeof i[r.field] !== 'string') continue;
        if (seen.has(i[r.field])) i[r.field] = `${String(i[r.field]).slice(0, 24)}-${n}`;
        seen.add(i[r.field]);
      }
    }
  }
  return value;
}

/** An arbitrary of the values `schema` accepts. */
export function arbitraryOf(schema: JsonSchema, ctx: SchemaContext, depth = 0): fc.Arbitrary<unknown> {
  const s = resolve(schema, ctx);
  if ('const' in s) return fc.constant(s.const);
  if (Array.isArray(s.enum)) return fc.constantFrom(...s.enum);
  const alternatives = s.anyOf ?? s.oneOf;
  if (Array.isArray(alternatives)) return fc.oneof(...alternatives.map((a: JsonSchema) => arbitraryOf(a, ctx, depth + 1)));
  if (Array.isArray(s.type)) return fc.oneof(...s.type.map((t: string) => arbitraryOf({ ...s, type: t }, ctx, depth + 1)));
  switch (s.type) {
    case 'string':
      return stringArbitrary(s, ctx);
    case 'integer':
      return numberArbitrary(s, true);
    case 'number':
      return numberArbitrary(s, false);
    case 'boolean':
      return fc.boolean();
    case 'null':
      return fc.constant(null);
    case 'array':
      return fc.array(arbitraryOf(s.items ?? {}, ctx, depth + 1), { minLength: s.minItems ?? 0, maxLength: Math.min(s.maxItems ?? 3, 3) });
    case 'object': {
      const props: Record<string, JsonSchema> = s.properties ?? {};
      const required = new Set<string>(s.required ?? []);
      const model: Record<string, fc.Arbitrary<unknown>> = {};
      for (const [k, v] of Object.entries(props)) model[k] = arbitraryOf(v, ctx, depth + 1);
      const extra =
        s.additionalProperties && typeof s.additionalProperties === 'object' && depth < 3
          ? fc.dictionary(
              fc.string({ minLength: 1, maxLength: 8 }).filter((k) => !(k in props)),
              arbitraryOf(s.additionalProperties, ctx, depth + 1),
              { maxKeys: 2 },
            )
          : fc.constant({});
      return fc
        .tuple(fc.record(model, { requiredKeys: [...required].filter((k) => k in model) }), extra)
        .map(([declared, more]) => applyRules({ ...more, ...declared }, s['x-dhm-rules']));
    }
    default:
      // `{}` accepts anything; keep it small.
      return fc.oneof(fc.constant(null), fc.boolean(), fc.integer(), fc.string({ maxLength: 8 }));
  }
}

/** One value of `arb` from a seeded run (reproducible: the seed is printed with any failure). */
export function sampleOne<T>(arb: fc.Arbitrary<T>, seed: number): T {
  return fc.sample(arb, { seed, numRuns: 1 })[0]!;
}
