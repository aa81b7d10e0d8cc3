import type { DashboardAssets } from './assets.js';

/**
 * The dashboard's two HTML pages. No inline script or style (the dashboard's CSP allows only its own files):
 * the shell carries empty sections the script fills from /dashboard/api/state.
 */

const escapeHtml = (text: string): string =>
  text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

function page(title: string, assets: DashboardAssets, body: string, withScript: boolean): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${escapeHtml(title)}</title>
<link rel="icon" href="/dashboard/assets/${assets.icon.name}" type="image/svg+xml">
<link rel="stylesheet" href="/dashboard/assets/${assets.stylesheet.name}">
${withScript ? `<script src="/dashboard/assets/${assets.script.name}" defer></script>\n` : ''}</head>
<body>
${body}
</body>
</html>
`;
}

/** The login form; `error` is shown above it. `closed`: no admin token is configured, so there is no form. */
export function loginPage(assets: DashboardAssets, options: { error?: string; closed?: boolean } = {}): string {
  const error = options.error === undefined ? '' : `<p class="error" role="alert">${escapeHtml(options.error)}</p>\n`;
  const form = options.closed
    ? ''
    : `<form method="post" action="/dashboard/login" class="login">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button>
</form>
<p class="hint">The token whose sha256 is <code>admin.tokenSha256</code> (or the value of the env var <code>admin.tokenEnv</code> names).</p>`;
  return page('pixeld dashboard: log in', assets, `<main class="narrow">\n<h1>pixeld dashboard</h1>\n${error}${form}\n</main>`, false);
}

/** The dashboard itself: sections the script fills and refreshes. */
export function dashboardPage(assets: DashboardAssets): string {
  const section = (id: string, title: string, note = '') =>
    `<section id="${id}">\n<h2>${title}</h2>${note === '' ? '' : `\n<p class="note">${note}</p>`}\n<div class="body"><p class="empty">Loading…</p></div>\n</section>`;
  const body = `<header>
<h1>pixeld dashboard</h1>
<p id="status" class="status">Loading…</p>
<form method="post" action="/dashboard/logout"><button type="submit">Log out</button></form>
</header>
<noscript><p class="error">The dashboard needs JavaScript to load its figures.</p></noscript>
<main>
<section id="earnings-summary" class="summary">
<div><h2>Settled</h2><p id="earnings-settled" class="figure">…</p></div>
<div><h2>Unsettled</h2><p id="earnings-unsettled" class="figure">…</p></div>
<div><h2>Off-chain (API keys)</h2><p id="earnings-offchain" class="figure">…</p></div>
</section>
${section('queue', 'Queue and backends', 'Pending counts come from the shared database; running and concurrency are this replica’s.')}
${section('throughput', 'Throughput, last hour', 'Jobs finished per minute (UTC).')}
${section('latency', 'Latency, last hour', 'Per minute, jobs that succeeded: p50 and p95 of queue wait + run time.')}
${section('jobs', 'Recent jobs')}
${section('earnings-days', 'Earnings per day (UTC)')}
${section('earnings-users', 'Earnings per user', 'The users with the largest fees.')}
${section('settlements', 'Settlement history')}
${section('attestation', 'Attestation')}
</main>`;
  return page('pixeld dashboard', assets, body, true);
}
