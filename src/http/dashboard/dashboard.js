// The pixeld dashboard's page script: polls /dashboard/api/state and redraws every section from it.
// Served as a file (the dashboard's CSP allows no inline script); builds the DOM with textContent only, so
// nothing from the API (owners, error messages) is ever parsed as HTML.
'use strict';

(() => {
  const POLL_MS = 5000;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const byId = (id) => document.getElementById(id);

  /** An element with attributes (`text` sets textContent) and children. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null) continue;
      if (name === 'text') node.textContent = String(value);
      else node.setAttribute(name, String(value));
    }
    node.append(...children.filter((c) => c !== undefined && c !== null));
    return node;
  }

  function svgEl(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const utc = (ms) => (ms === null || ms === undefined ? '—' : `${new Date(ms).toISOString().replace('T', ' ').slice(0, 19)} UTC`);
  const hhmm = (ms) => new Date(ms).toISOString().slice(11, 16);
  const shortId = (s) => (s.length > 16 ? `${s.slice(0, 8)}…${s.slice(-6)}` : s);
  const og = (amount) => `${amount.og.endsWith('.0') ? amount.og.slice(0, -2) : amount.og} 0G`;
  const ms = (value) => {
    if (value === null || value === undefined) return '—';
    if (value < 1000) return `${Math.round(value)} ms`;
    if (value < 60_000) return `${(value / 1000).toFixed(1)} s`;
    return `${(value / 60_000).toFixed(1)} min`;
  };

  /** An amount in 0G, with the exact wei on hover. */
  const money = (amount) => el('span', { class: 'amount', title: `${amount.wei} wei`, text: og(amount) });
  const code = (text, title) => el('code', { title, text });

  function table(headers, rows, emptyText) {
    if (rows.length === 0) return el('p', { class: 'empty', text: emptyText });
    const head = el('tr', {}, ...headers.map((h) => el('th', { text: h })));
    return el('table', {}, el('thead', {}, head), el('tbody', {}, ...rows));
  }

  const cell = (content) => (content instanceof Node ? el('td', {}, content) : el('td', { text: content }));
  const row = (attrs, cells) => el('tr', attrs, ...cells.map(cell));

  function fill(sectionId, ...nodes) {
    byId(sectionId).querySelector('.body').replaceChildren(...nodes);
  }

  function renderStatus(state) {
    const status = byId('status');
    status.className = `status ${state.ready ? 'ok' : 'bad'}`;
    status.textContent = `${state.ready ? 'Ready' : 'Not ready'} · store ${state.store_health} · replica ${state.replica} · pixeld ${state.version} · updated ${utc(state.now_ms)}`;
  }

  function renderEarningsSummary(totals) {
    byId('earnings-settled').replaceChildren(money(totals.settled));
    byId('earnings-unsettled').replaceChildren(money(totals.unsettled));
    byId('earnings-offchain').replaceChildren(money(totals.offchain));
  }

  function renderQueue(backends) {
    const rows = backends.map((b) =>
      row({}, [
        b.id,
        b.type,
        el('span', { class: b.health === 'ok' ? 'ok' : 'bad', text: b.health }),
        String(b.pending),
        `${b.running} / ${b.concurrency}`,
      ]),
    );
    fill('queue', table(['Backend', 'Type', 'Health', 'Pending', 'Running / concurrency'], rows, 'No backends are configured.'));
  }

  function thumbnail(job) {
    if (job.thumbnails.length > 0) {
      return el('img', { src: job.thumbnails[0], alt: `first image of ${job.id}`, width: 64, height: 64 });
    }
    const label = job.expired ? 'expired' : job.status === 'completed' ? 'no image' : job.status;
    return el('span', { class: 'placeholder', text: label });
  }

  function renderJobs(jobs) {
    const rows = jobs.map((job) => {
      const took = job.finished_ms !== null ? ms(job.finished_ms - job.created_ms) : '—';
      const error = job.error ? el('span', { class: 'bad', title: job.error.message, text: job.error.code }) : '';
      return row({ 'data-job-id': job.id }, [
        thumbnail(job),
        code(shortId(job.id), job.id),
        el('span', { class: `job-status ${job.status}`, text: job.expired ? 'completed (expired)' : job.status }),
        job.model,
        code(shortId(job.owner), job.owner),
        utc(job.created_ms),
        took,
        `${job.images} / ${job.n}`,
        String(job.attempts),
        error,
      ]);
    });
    fill('jobs', table(['', 'Job', 'Status', 'Model', 'Owner', 'Created', 'Took', 'Images', 'Attempts', 'Error'], rows, 'No jobs yet: they appear here as they are submitted.'));
  }

  const CHART = { width: 720, height: 170, left: 44, right: 8, top: 10, bottom: 22 };

  /** An empty chart frame for `buckets`, with its y scale; returns the svg and x/y mappers. */
  function chartFrame(buckets, maxValue, yLabel) {
    const { width, height, left, right, top, bottom } = CHART;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const svg = svgEl('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img' });
    const slot = plotW / Math.max(1, buckets.length);
    const x = (i) => left + i * slot;
    const y = (v) => top + plotH - (maxValue === 0 ? 0 : (v / maxValue) * plotH);
    svg.append(svgEl('line', { x1: left, y1: top + plotH, x2: width - right, y2: top + plotH, class: 'axis' }));
    svg.append(svgEl('line', { x1: left, y1: top, x2: left, y2: top + plotH, class: 'axis' }));
    svg.append(svgEl('text', { x: left - 4, y: top + 8, class: 'tick end' }, yLabel(maxValue)));
    svg.append(svgEl('text', { x: left - 4, y: top + plotH, class: 'tick end' }, yLabel(0)));
    buckets.forEach((b, i) => {
      if (i % 15 === 0 || i === buckets.length - 1) {
        svg.append(svgEl('text', { x: x(i) + slot / 2, y: height - 6, class: 'tick middle' }, hhmm(b.start_ms)));
      }
    });
    return { svg, x, y, slot };
  }

  function legend(entries) {
    return el('p', { class: 'legend' }, ...entries.map(([cls, label]) => el('span', { class: `key ${cls}`, text: label })));
  }

  function renderThroughput(buckets) {
    const total = (b) => b.succeeded + b.failed + b.cancelled;
    const max = Math.max(1, ...buckets.map(total));
    const { svg, x, y, slot } = chartFrame(buckets, max, (v) => `${v}`);
    buckets.forEach((b, i) => {
      let base = 0;
      for (const [field, cls] of [['succeeded', 'succeeded'], ['failed', 'failed'], ['cancelled', 'cancelled']]) {
        const v = b[field];
        if (v === 0) continue;
        const rect = svgEl('rect', { x: x(i) + 1, y: y(base + v), width: Math.max(1, slot - 2), height: y(base) - y(base + v), class: `bar ${cls}` });
        rect.append(svgEl('title', {}, `${hhmm(b.start_ms)} UTC: ${v} ${field}, ${b.images} images delivered`));
        svg.append(rect);
        base += v;
      }
    });
    const finished = buckets.reduce((n, b) => n + total(b), 0);
    const images = buckets.reduce((n, b) => n + b.images, 0);
    fill(
      'throughput',
      el('p', { class: 'note', text: `${finished} jobs finished and ${images} images delivered in the last hour.` }),
      svg,
      legend([['succeeded', 'succeeded'], ['failed', 'failed'], ['cancelled', 'cancelled']]),
    );
  }

  function renderLatency(buckets) {
    const measured = buckets.filter((b) => b.total_ms !== null);
    if (measured.length === 0) {
      fill('latency', el('p', { class: 'empty', text: 'No job succeeded in the last hour, so there is no latency to show.' }));
      return;
    }
    const max = Math.max(...measured.map((b) => b.total_ms.p95));
    const { svg, x, y, slot } = chartFrame(buckets, max, ms);
    for (const [field, cls] of [['p95', 'p95'], ['p50', 'p50']]) {
      const points = [];
      buckets.forEach((b, i) => {
        if (b.total_ms === null) return;
        const px = x(i) + slot / 2;
        const py = y(b.total_ms[field]);
        points.push(`${px.toFixed(1)},${py.toFixed(1)}`);
        const dot = svgEl('circle', { cx: px, cy: py, r: 2.5, class: `dot ${cls}` });
        dot.append(svgEl('title', {}, `${hhmm(b.start_ms)} UTC: ${field} ${ms(b.total_ms[field])} (run ${ms(b.run_ms[field])})`));
        svg.append(dot);
      });
      if (points.length > 1) svg.append(svgEl('polyline', { points: points.join(' '), class: `line ${cls}` }));
    }
    fill('latency', svg, legend([['p50', 'p50 wait + run'], ['p95', 'p95 wait + run']]));
  }

  function renderEarnings(earnings) {
    const days = earnings.by_day.map((d) =>
      row({}, [d.day, String(d.receipts), String(d.images), money(d.settled), money(d.unsettled), money(d.offchain), money(d.unbillable)]),
    );
    fill(
      'earnings-days',
      table(['Day', 'Receipts', 'Images', 'Settled', 'Unsettled', 'Off-chain', 'Never charged'], days, 'No receipts yet: each paid job writes one.'),
    );
    const users = earnings.by_user.map((u) =>
      row({}, [code(shortId(u.user), u.user), String(u.receipts), String(u.images), money(u.settled), money(u.unsettled), money(u.offchain), money(u.unbillable)]),
    );
    fill(
      'earnings-users',
      table(['User', 'Receipts', 'Images', 'Settled', 'Unsettled', 'Off-chain', 'Never charged'], users, 'No receipts yet: each paid job writes one.'),
    );
  }

  function renderSettlements(settlement) {
    const rows = settlement.batches.map((b) =>
      row({ 'data-batch-id': b.id }, [
        utc(b.created_ms),
        el('span', { class: `batch-state ${b.state}`, text: b.state }),
        String(b.users),
        String(b.receipts),
        money(b.total_fee),
        b.block === null ? '—' : String(b.block),
        b.tx_hashes.length === 0 ? '—' : el('div', { class: 'hashes' }, ...b.tx_hashes.map((h) => code(h, h))),
        b.results.length === 0 ? '—' : el('div', {}, ...b.results.map((r) => el('div', { text: `${shortId(r.user)}: ${r.status}` }))),
        b.note ?? '',
      ]),
    );
    const empty = settlement.enabled
      ? 'No settlement batches yet: a round sends one when receipts are owed.'
      : 'This daemon does not settle: configure chain.* and the provider wallet.';
    const notes = [];
    if (settlement.running) notes.push(el('p', { class: 'note', text: 'A settlement round is running now.' }));
    if (settlement.next_scheduled_ms !== null) {
      notes.push(el('p', { class: 'note', text: `Next scheduled round: ${utc(settlement.next_scheduled_ms)} (users past a threshold are settled sooner).` }));
    }
    fill('settlements', ...notes, table(['Created', 'State', 'Users', 'Receipts', 'Total fee', 'Block', 'Transactions', 'Results', 'Note'], rows, empty));
  }

  function renderAttestation(a) {
    const check =
      a.quote_binds_signer === null
        ? el('span', { text: a.tee === 'none' ? 'no quote: tee.mode is dev (nothing attests the key)' : 'no quote' })
        : el('span', { class: a.quote_binds_signer ? 'ok' : 'bad', text: a.quote_binds_signer ? '✓ report_data binds this signer' : '✗ report_data does not bind this signer' });
    const entries = [
      ['TEE', a.tee === 'none' ? 'none (dev key)' : a.tee],
      ['Signer', code(a.signing_address)],
      ['Key source', a.key_source],
      ['Provider', code(a.provider_address)],
      ['Last report', utc(a.report_ms)],
      ['Quote provider', a.quote_provider ?? '—'],
      ['Quote check', check],
    ];
    if (a.error) entries.push(['Error', el('span', { class: 'bad', text: a.error })]);
    const list = el('dl', {}, ...entries.flatMap(([k, v]) => [el('dt', { text: k }), v instanceof Node ? el('dd', {}, v) : el('dd', { text: v })]));
    fill('attestation', list);
  }

  function render(state) {
    renderStatus(state);
    renderEarningsSummary(state.earnings.totals);
    renderQueue(state.backends);
    renderThroughput(state.activity.buckets);
    renderLatency(state.activity.buckets);
    renderJobs(state.jobs);
    renderEarnings(state.earnings);
    renderSettlements(state.settlement);
    renderAttestation(state.attestation);
  }

  async function poll() {
    try {
      const res = await fetch('/dashboard/api/state', { headers: { accept: 'application/json' }, cache: 'no-store' });
      if (res.status === 401) {
        // The session expired (or the admin token changed): back to the login form.
        window.location.assign('/dashboard');
        return;
      }
      if (!res.ok) throw new Error(`the daemon answered ${res.status}`);
      render(await res.json());
    } catch (err) {
      const status = byId('status');
      status.className = 'status bad';
      status.textContent = `Could not refresh (${err.message}); retrying every ${POLL_MS / 1000} s.`;
    }
    setTimeout(poll, POLL_MS);
  }

  poll();
})();
