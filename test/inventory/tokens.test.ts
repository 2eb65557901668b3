import type { TestDatabase } from '../support/database';
import type { Inventory } from '../../inventory';
import { expectInventoryError, inventoryPerFile } from './helpers';

/** Tenant tokens: a rotation replaces the token (the old one stops working at once), a revoke leaves none working. */
let db: TestDatabase;
let inv: Inventory;

inventoryPerFile((d, i) => {
  db = d;
  inv = i;
});

test('rotate: the new token works and the old one does not; revoke: none works until the next rotation; both audited without the token', async () => {
  const t = await inv.createTenant('rotating');
  expect((await inv.findTenantByToken(t.token))?.id).toBe(t.id);
  const rotated = await inv.rotateTenantToken({ tenantId: t.id, actor: 'operator' });
  expect(rotated.token).not.toBe(t.token);
  expect(await inv.findTenantByToken(t.token)).toBeNull();
  expect((await inv.findTenantByToken(rotated.token))?.id).toBe(t.id);

  const revoked = await inv.revokeTenantToken({ tenantId: t.id, actor: 'operator' });
  expect(revoked).toMatchObject({ id: t.id, revokedAt: expect.any(String) });
  expect(await inv.findTenantByToken(rotated.token)).toBeNull();
  // A repeated revoke changes nothing (same time, one audit event).
  expect((await inv.revokeTenantToken({ tenantId: t.id, actor: 'operator' })).revokedAt).toBe(revoked.revokedAt);

  const again = await inv.rotateTenantToken({ tenantId: t.id, actor: 'operator' });
  expect((await inv.findTenantByToken(again.token))?.id).toBe(t.id);
  const { rows } = await db.pool.query(`SELECT action, details::text AS d FROM audit_events WHERE entity_id = $1 ORDER BY id`, [t.id]);
  expect(rows.map((r) => r.action)).toEqual(['tenant.created', 'tenant.token_rotated', 'tenant.token_revoked', 'tenant.token_rotated']);
  for (const r of rows) for (const tok of [t.token, rotated.token, again.token]) expect(r.d).not.toContain(tok);

  await expectInventoryError(inv.rotateTenantToken({ tenantId: 'tn-missing', actor: 'operator' }), 'NOT_FOUND', 'tenantId');
  await expectInventoryError(inv.revokeTenantToken({ tenantId: 'tn-missing', actor: 'operator' }), 'NOT_FOUND', 'tenantId');
});
