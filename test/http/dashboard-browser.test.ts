import { createHash } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useBillingChain } from '../billing/chain-hooks.js';
import { completedJob, fundedUsers, PRICE, startBillingDaemon, type BillingChain } from '../billing/fixture.js';

/**
 * The dashboard in a real browser (Debian's chromium, driven by playwright-core) against a daemon billing
 * 0G users on the anvil test chain: log in through the form, see a job submitted through the API appear
 * with its thumbnail, see the earnings move from unsettled to settled after a settlement round, and no
 * CSP violation or script error on the way.
 */

const CHROMIUM = '/usr/bin/chromium';
const ADMIN_TOKEN = 'dashboard-browser-admin-token';
/** The page polls every 5 s; a figure must show within a few polls. */
const SHOWN_MS = 20_000;

let c: BillingChain;
const cleanups = useBillingChain((chain) => (c = chain));

let browser: Browser;
beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get update && apt-get install -y chromium; .ci/run does this)`);
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // No sandbox (containers), no GPU, and nothing that reaches for the internet.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}, 60_000);
afterAll(async () => {
  await browser?.close();
});

/**
 * Every console error, page error and CSP report the page produced, but the one the test causes on purpose:
 * the 401 answering a wrong token.
 */
function watchProblems(page: Page, wrongLoginUrl: string): string[] {
  const problems: string[] = [];
  page.on('console', (m) => {
    const expected = m.location().url === wrongLoginUrl && /status of 401/.test(m.text());
    if (!expected && (m.type() === 'error' || /Content Security Policy/i.test(m.text()))) {
      problems.push(`console ${m.type()}: ${m.text()} (${m.location().url})`);
    }
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
  return problems;
}

describe('/dashboard in chromium', () => {
  it('logs in, shows a new job with its thumbnail, and moves its fee from unsettled to settled after a round', { timeout: 120_000 }, async () => {
    const d = await startBillingDaemon(c, { config: { admin: { tokenSha256: createHash('sha256').update(ADMIN_TOKEN).digest('hex') } } });
    cleanups.push(() => rmSync(d.dataDir, { recursive: true, force: true }));
    cleanups.push(() => d.close());
    const [user] = await fundedUsers(c, 1);
    const context = await browser.newContext();
    cleanups.push(() => context.close());
    const page = await context.newPage();
    const problems = watchProblems(page, `${d.url}/dashboard/login`);

    await page.goto(`${d.url}/dashboard`);
    await page.fill('#token', 'a wrong token');
    await page.click('button[type=submit]');
    await page.waitForSelector('text=Wrong admin token.');
    await page.fill('#token', ADMIN_TOKEN);
    await Promise.all([page.waitForURL(`${d.url}/dashboard`), page.click('button[type=submit]')]);
    const [cookie] = await context.cookies();
    expect(cookie).toMatchObject({ name: 'pixeld_dashboard', httpOnly: true, sameSite: 'Strict', path: '/dashboard' });
    await expect.poll(() => page.textContent('#earnings-settled'), { timeout: SHOWN_MS }).toBe('0 0G');
    expect(await page.textContent('#jobs')).toContain('No jobs yet');

    const jobId = await completedJob(d, c, user!, 1);
    const thumbnail = `tr[data-job-id="${jobId}"] img`;
    await page.waitForSelector(thumbnail, { timeout: SHOWN_MS });
    await page.waitForFunction((selector) => {
      const img = document.querySelector<HTMLImageElement>(selector);
      return img !== null && img.complete && img.naturalWidth > 0;
    }, thumbnail);
    expect(await page.$eval(thumbnail, (img: HTMLImageElement) => img.naturalWidth)).toBe(96);
    expect(await page.textContent(`tr[data-job-id="${jobId}"]`)).toContain('completed');
    const owed = `${Number(PRICE) / 1e18} 0G`;
    await expect.poll(() => page.textContent('#earnings-unsettled'), { timeout: SHOWN_MS }).toBe(owed);
    expect(await page.textContent('#earnings-settled')).toBe('0 0G');

    const round = await d.daemon.settler!.runRound({ reason: 'test' });
    expect(round.outcome).toBe('completed');
    await expect.poll(() => page.textContent('#earnings-settled'), { timeout: SHOWN_MS }).toBe(owed);
    expect(await page.textContent('#earnings-unsettled')).toBe('0 0G');
    const txHash = round.transactions[0]!;
    expect(await page.textContent('#settlements')).toContain(txHash);
    // The fixture's billing.settlementCron fires once a year, on the minute.
    expect(await page.textContent('#settlements')).toMatch(/Next scheduled round: \d{4}-\d\d-\d\d \d\d:\d\d:00 UTC/);
    expect(await page.textContent('#earnings-users')).toContain(user!.address.slice(0, 8));

    await Promise.all([page.waitForURL(`${d.url}/dashboard`), page.click('header button[type=submit]')]);
    expect(await page.isVisible('#token')).toBe(true);
    expect(await context.cookies()).toEqual([]);
    expect(problems).toEqual([]);
  });
});
