import * as fs from 'node:fs';
import * as path from 'node:path';
import { fleetSchema, type Fleet } from '../common/fleet';
import { InventoryError } from './errors';

/** The fleet `dhm up`, the demo and the tests use unless told otherwise (found from a build in dist/ too). */
export function defaultFleetPath(): string {
  const candidates = [path.join(__dirname, 'fleets', 'default.json'), path.resolve(__dirname, '..', '..', 'inventory', 'fleets', 'default.json')];
  return candidates.find((p) => fs.existsSync(p)) ?? candidates[0]!;
}

/** Validates fleet JSON text; errors name the file and the field (`servers.3.zone: unknown zone zone-c`). */
export function parseFleet(text: string, source = 'fleet'): Fleet {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new InventoryError('INVALID_INPUT', `${source}: not valid JSON (${(err as Error).message})`);
  }
  const r = fleetSchema.safeParse(raw);
  if (!r.success) {
    const issues = r.error.issues.map((i) => ({ field: i.path.map(String).join('.'), message: i.message }));
    const first = issues[0]!;
    const listed = issues
      .slice(0, 10)
      .map((i) => (i.field ? `${i.field}: ${i.message}` : i.message))
      .join('; ');
    throw new InventoryError(
      'INVALID_INPUT',
      `${source}: ${listed}${issues.length > 10 ? ` (and ${issues.length - 10} more)` : ''}`,
      first.field || undefined,
      {
        file: source,
        issues,
      },
    );
  }
  return r.data;
}

export function loadFleetFile(file = defaultFleetPath()): Fleet {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new InventoryError('INVALID_INPUT', `${file}: cannot read fleet file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return parseFleet(text, file);
}
