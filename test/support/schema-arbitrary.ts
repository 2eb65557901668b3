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
  const lo = s.minimum ?? (s.exclusiveMinimum !== undefined ? s.exclusiveMinimum + (integer ? 1 : Number.EPSILON * Math.max(1, Math.abs(s.exclusiveMinimum))) : -1e6);
  const hi = s.maximum ?? (s.exclusiveMaximum !== undefined ? s.exclusiveMaximum - (integer ? 1 : Number.EPSILON * Math.max(1, Math.abs(s.exclusiveMaximum))) : 1e6);
  const min = Math.max(lo, integer ? Number.MIN_SAFE_INTEGER : -Number.MAX_VALUE);
  const max = Math.min(hi, integer ? Number.MAX_SAFE_INTEGER : Number.MAX_VALUE);
  if (integer) {
    // Bounds and small values are where validators disagree; mix them with the whole range.
    const edges = [min, max, Math.min(max, Math.max(min, 0)), Math.min(max, min + 1)].filter((v) => Number.isSafeInteger(v));
    return fc.oneof(fc.constantFrom(...edges), fc.integer({ min: Math.ceil(min), max: Math.floor(max) }));
  }
  return fc.oneof(fc.constantFrom(min, max), fc.double({ min, max, noNaN: true, noDefaultInfinity: true }));
}

function applyRules(value: Record<string, any>, rules: ReadonlyArray<any> | undefined): Record<string, any> {
  for (const r of rules ?? []) {
    if (r.rule !== 'lessOrEqual') continue;
    const path = String(r.field).split('.');
    let holder: any = value;
    for (const p of path.slice(0, -1)) holder = holder?.[p];
    const leaf = path[path.length - 1]!;
    const bound = String(r.than)
      .split('.')
      .reduce((o: any, p) => o?.[p], value);
    if (holder && typeof holder[leaf] === 'number' && typeof bound === 'number' && holder[leaf] > bound) holder[leaf] = bound;
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
          ? fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }).filter((k) => !(k in props)), arbitraryOf(s.additionalProperties, ctx, depth + 1), { maxKeys: 2 })
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
