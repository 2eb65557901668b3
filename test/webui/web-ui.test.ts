import * as fs from 'node:fs';
import * as path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { startTestSystem, type TestSystem } from '../support/system';

const ARTIFACTS = path.resolve(__dirname, '..', '..', 'test-artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/**
 * What an operator sees in the Temporal Web UI, checked in a real (headless) Chromium: the migration found by its
 * DedicatedHostId search attribute, its summary, its current details and the per-VM activity summaries.
 */
describe('the migration in the Temporal Web UI', () => {
  let sys: TestSystem;
  let browser: Browser;
  beforeAll(async () => {
    sys = await startTestSystem({ timeScale: 200 });
    // The flags keep Chromium off the network this machine does not have, and run it as root.
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await sys?.stop();
  });

  it('finds the migration by DedicatedHostId and shows its summary, current details and per-VM activity summaries', async () => {
    const { hostId, vmIds } = await sys.createHostWithVms({ vms: 3 });
    const handle = await sys.startMigration(hostId);
    expect((await handle.result()).phase).toBe('completed');
    const ui = process.env.DHM_TEST_UI_URL!;
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const query = encodeURIComponent(`DedicatedHostId="${hostId}"`);
    await page.goto(`${ui}/namespaces/default/workflows?query=${query}`);
    // The list filtered by the search attribute shows exactly this migration; open it.
    const link = page.getByRole('link', { name: handle.workflowId });
    await link.first().waitFor({ timeout: 30_000 });
    await link.first().click();
    await page.getByText('migrateDedicatedHost').first().waitFor({ timeout: 30_000 });
    // Per-VM activity summaries in the event history timeline.
    for (const vmId of vmIds)
      await page
        .getByText(new RegExp(`live-migrate vm-\\d+ \\(${vmId}\\)`))
        .first()
        .waitFor({ timeout: 30_000 });
    await page
      .getByText(/finalizeMigration • make .* the host/)
      .first()
      .waitFor();
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'web-ui-history.png'), fullPage: true });
    // Summary (static) and current details (kept by the workflow) under User Metadata.
    await page.getByRole('tab', { name: 'User Metadata' }).or(page.getByText('User Metadata')).first().click();
    // The UI renders the summary and the markdown details in frames of their own: read every frame.
    const everywhere = async () => (await Promise.all(page.frames().map((f) => f.innerText('body').catch(() => '')))).join('\n');
    const deadline = Date.now() + 30_000;
    let text = await everywhere();
    while (!(text.includes(`Live migration of dedicated host ${hostId}`) && text.includes('Migration of dedicated host')) && Date.now() < deadline) {
      await page.waitForTimeout(250); // re-read until the deadline: the frames load after the tab opens
      text = await everywhere();
    }
    expect(text).toContain(`Live migration of dedicated host ${hostId}`);
    expect(text).toMatch(/Migration of dedicated host\s+dh-/);
    expect(text).toMatch(/Phase:\s*completed/);
    expect(text).toMatch(/3 moved/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'web-ui-metadata.png'), fullPage: true });
  }, 120_000);
});
