import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

/**
 * The dashboard's script, stylesheet and icon: files beside this module (the build copies them into dist), read
 * once and served under a name carrying their content hash, so a browser may keep them for a year and a
 * new version is a new URL.
 */

export interface DashboardAsset {
  /** The versioned file name, e.g. `dashboard.3f9a1c2b.js`. */
  name: string;
  contentType: string;
  body: Buffer;
}

export interface DashboardAssets {
  script: DashboardAsset;
  stylesheet: DashboardAsset;
  /** Without one the browser asks for /favicon.ico, a 404 in its console on every load. */
  icon: DashboardAsset;
  byName: ReadonlyMap<string, DashboardAsset>;
}

function load(file: string, contentType: string): DashboardAsset {
  const body = readFileSync(new URL(`./${file}`, import.meta.url));
  const hash = createHash('sha256').update(body).digest('hex').slice(0, 12);
  const dot = file.lastIndexOf('.');
  return { name: `${file.slice(0, dot)}.${hash}${file.slice(dot)}`, contentType, body };
}

export function loadDashboardAssets(): DashboardAssets {
  const script = load('dashboard.js', 'text/javascript; charset=utf-8');
  const stylesheet = load('dashboard.css', 'text/css; charset=utf-8');
  const icon = load('favicon.svg', 'image/svg+xml');
  return { script, stylesheet, icon, byName: new Map([script, stylesheet, icon].map((a) => [a.name, a])) };
}
