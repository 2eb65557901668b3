import type { Pool } from 'pg';

export interface ProbeActivities {
  countRows(table: string): Promise<number>;
}

export function createProbeActivities(pool: Pool): ProbeActivities {
  return {
    async countRows(table) {
      // Table names cannot be bound as parameters; check against the catalogue instead of quoting user text.
      const known = await pool.query('SELECT 1 FROM information_schema.tables WHERE table_name = $1', [table]);
      if (!known.rowCount) throw new Error(`unknown table ${table}`);
      const { rows } = await pool.query(`SELECT count(*)::int AS n FROM "${table}"`);
      return rows[0].n as number;
    },
  };
}
