// Orchion's dashboard: a page per resource over the REST API, kept current by the event stream
// (/api/v1/events). No framework and no build step; every asset is served by the binary.
// Text from the API only ever reaches the page through textContent, never as HTML.
'use strict';

const PAGE = 50;
const STATUS_COLORS = {
  succeeded: '#1f8a4c', failed: '#c63b3b', running: '#2f6fdd', queued: '#8a93a6',
  pending: '#8a93a6', skipped: '#b5bccb', cancelled: '#b97800', timed_out: '#b97800',
};

// ---- small helpers ----------------------------------------------------------------------

/** Builds an element: h('a', {href: '#/x'}, 'text', child). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const status = (s) => h('span', { class: `status ${s || ''}`, 'data-status': s || '' }, s || '—');
const mono = (s) => h('span', { class: 'mono' }, s ?? '—');
const json = (v) => h('pre', { class: 'json' }, JSON.stringify(v, null, 2));
const shortId = (id) => (id ? id.slice(-12) : '—');

function when(at) {
  if (!at) return '—';
  const then = new Date(at);
  const seconds = Math.round((Date.now() - then.getTime()) / 1000);
  let ago;
  if (seconds < 60) ago = `${Math.max(seconds, 0)}s ago`;
  else if (seconds < 3600) ago = `${Math.floor(seconds / 60)}m ago`;
  else if (seconds < 86400) ago = `${Math.floor(seconds / 3600)}h ago`;
  else ago = then.toLocaleDateString();
  return h('span', { title: then.toISOString() }, ago);
}

function bytes(n) {
  if (!n) return '0';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function toast(message, error) {
  const el = document.getElementById('toast');
  el.textContent = message;
  el.className = error ? 'show error' : 'show';
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.className = ''; }, 4000);
}

/** The signed-in session: its CSRF token goes with every change (the cookie is HttpOnly). */
const session = { csrf: null };

/** Calls the API; a problem answer becomes an Error carrying its detail. */
async function api(path, options) {
  const method = (options && options.method) || 'GET';
  const headers = { accept: 'application/json', 'content-type': 'application/json' };
  if (method !== 'GET' && session.csrf) headers['x-csrf-token'] = session.csrf;
  const response = await fetch(path, { ...options, headers, credentials: 'same-origin' });
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (response.status === 401 && path !== '/api/v1/session') {
    signIn();
    throw new Error('sign in first');
  }
  if (!response.ok) throw new Error((body && (body.detail || body.title)) || `${response.status}`);
  return body;
}

/** The sign-in page: an API token, or the identity provider when one is configured, becomes a
 * session cookie. Nothing else is shown. */
function signIn(message) {
  const view = document.getElementById('view');
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off',
    placeholder: 'orc_…', 'aria-label': 'API token' });
  const form = h('form', { class: 'panel', id: 'sign-in', onsubmit: async (event) => {
    event.preventDefault();
    try {
      const answer = await api('/api/v1/session', {
        method: 'POST', body: JSON.stringify({ token: input.value.trim() }) });
      session.csrf = answer.csrf_token;
      location.hash = '#/';
      start();
    } catch (e) {
      signIn(e.message);
    }
  } },
  h('p', {}, 'Sign in with an API token (`orchion token create --role viewer`, or the admin token the server made).'),
  input, ' ', h('button', { type: 'submit' }, 'Sign in'),
  message ? h('p', { class: 'error' }, message) : '');
  const providers = h('div', { id: 'sign-in-providers' });
  view.replaceChildren(h('div', {}, h('h1', {}, 'Sign in'), form, providers));
  fetch('/api/v1/session/methods', { headers: { accept: 'application/json' } })
    .then((r) => (r.ok ? r.json() : {}))
    .then((methods) => {
      if (!methods.oidc) return;
      providers.replaceChildren(h('p', { class: 'panel' },
        h('a', { class: 'button', id: 'sign-in-oidc', href: methods.oidc.login_url },
          `Sign in with ${methods.oidc.name}`)));
    })
    .catch(() => { /* the token form still works */ });
}

async function signOut() {
  try { await api('/api/v1/session', { method: 'DELETE' }); } catch (e) { /* signed out anyway */ }
  session.csrf = null;
  signIn();
}

/** A button that calls the API, says how it went and refreshes the page. */
function action(label, path, { danger, confirmText } = {}) {
  return h('button', {
    class: danger ? 'danger' : 'secondary',
    onclick: async (event) => {
      event.preventDefault();
      if (confirmText && !window.confirm(confirmText)) return;
      event.target.disabled = true;
      try {
        await api(path, { method: 'POST' });
        toast(`${label}: done`);
      } catch (e) {
        toast(`${label}: ${e.message}`, true);
      }
      refresh();
    },
  }, label);
}

function table(headers, rows, empty) {
  if (!rows.length) return h('div', { class: 'empty' }, empty || 'Nothing here yet.');
  return h('table', {},
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, x)))),
    h('tbody', {}, rows));
}

// ---- routing and live updates ------------------------------------------------------------

/** The current route: `#/runs/ID?status=failed` is {view: 'runs', id: 'ID', query}. */
function route() {
  const [path, search] = (location.hash.slice(1) || '/').split('?');
  const [, view, id] = path.split('/');
  return { view: view || 'overview', id, query: new URLSearchParams(search || '') };
}

function setQuery(changes) {
  const r = route();
  for (const [k, v] of Object.entries(changes)) {
    if (v) r.query.set(k, v); else r.query.delete(k);
  }
  const base = r.id ? `#/${r.view}/${r.id}` : `#/${r.view}`;
  const search = r.query.toString();
  location.hash = search ? `${base}?${search}` : base;
}

/** Cursors of the pages before the current one, per list; reset when its filters change. */
const paging = { key: '', cursors: [], cursor: null };

function pageCursor(key) {
  if (paging.key !== key) Object.assign(paging, { key, cursors: [], cursor: null });
  return paging.cursor;
}

function pager(next) {
  return h('div', { class: 'pager' },
    h('button', {
      class: 'secondary',
      disabled: !paging.cursors.length,
      onclick: () => { paging.cursor = paging.cursors.pop() ?? null; refresh(); },
    }, '← Newer'),
    h('span', {}, `Page ${paging.cursors.length + 1}`),
    h('button', {
      class: 'secondary',
      disabled: !next,
      onclick: () => { paging.cursors.push(paging.cursor); paging.cursor = next; refresh(); },
    }, 'Older →'));
}

let rendering = null;
let pending = false;
let cleanup = [];

/** Renders the current route; a refresh while one runs is folded into one more. */
async function refresh() {
  if (rendering) { pending = true; return; }
  const r = route();
  const view = VIEWS[r.view] || VIEWS.overview;
  document.querySelectorAll('header nav a').forEach((a) => {
    a.classList.toggle('active', a.dataset.view === r.view);
  });
  rendering = (async () => {
    try {
      const content = await view(r);
      const main = document.getElementById('view');
      const focused = document.activeElement && document.activeElement.id;
      main.replaceChildren(content);
      if (focused) {
        const again = document.getElementById(focused);
        if (again) { again.focus(); if (again.setSelectionRange) again.setSelectionRange(again.value.length, again.value.length); }
      }
    } catch (e) {
      document.getElementById('view').replaceChildren(
        h('div', { class: 'panel' }, h('h1', {}, 'Cannot load this page'), h('p', {}, e.message)));
    }
  })();
  await rendering;
  rendering = null;
  if (pending) { pending = false; refresh(); }
}

let refreshTimer = null;
function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 250);
}

function connectEvents() {
  const live = document.getElementById('live');
  const source = new EventSource('/api/v1/events');
  source.onopen = () => { live.textContent = 'live'; live.className = 'live on'; };
  source.onerror = () => { live.textContent = 'reconnecting…'; live.className = 'live off'; };
  source.onmessage = () => refreshSoon();
}

window.addEventListener('hashchange', () => {
  cleanup.forEach((f) => f());
  cleanup = [];
  refresh();
});

// ---- views -------------------------------------------------------------------------------

async function overview() {
  const [summary, executors, recentRuns, recentJobs] = await Promise.all([
    api('/api/v1/status'),
    api('/api/v1/executors'),
    api('/api/v1/workflows?order=newest&limit=10'),
    api('/api/v1/jobs?order=newest&limit=10'),
  ]);
  const card = (n, label, href) => h('a', { class: 'card', href },
    h('div', { class: 'n' }, n), h('div', { class: 'l' }, label));
  return h('div', {},
    h('h1', {}, 'Overview'),
    h('div', { class: 'cards' },
      card(summary.nodes.ready, 'nodes ready', '#/nodes?status=ready'),
      card(summary.nodes.unreachable + summary.nodes.down, 'nodes unreachable or down', '#/nodes'),
      card(summary.tasks.queued, 'tasks queued', '#/jobs?status=queued'),
      card(summary.tasks.running, 'tasks running', '#/jobs?status=running'),
      card(summary.store.backend, `store (v${summary.version})`, '#/')),
    h('h2', {}, 'Executors'),
    h('div', { class: 'panel' }, table(['Executor', 'Health', 'Agents', 'Detail'],
      executors.items.map((e) => h('tr', {}, h('td', {}, e.name), h('td', {}, status(e.health)),
        h('td', {}, e.agents), h('td', { class: 'muted' }, e.detail || ''))))),
    h('h2', {}, 'Recent runs'),
    h('div', { class: 'panel' }, runTable(recentRuns.items)),
    h('h2', {}, 'Recent jobs'),
    h('div', { class: 'panel' }, jobTable(recentJobs.items)));
}

async function nodes(r) {
  const filter = r.query.get('status') || '';
  const key = `nodes:${filter}`;
  const params = new URLSearchParams({ limit: '100' });
  if (filter) params.set('status', filter);
  const cursor = pageCursor(key);
  if (cursor) params.set('cursor', cursor);
  const page = await api(`/api/v1/nodes?${params}`);
  return h('div', {},
    h('h1', {}, 'Nodes'),
    h('div', { class: 'filters' },
      select('status', ['', 'ready', 'draining', 'unreachable', 'down'], filter)),
    h('div', { class: 'panel' },
      table(['Name', 'Status', 'Labels', 'Capacity', 'Executors', 'Last heartbeat', ''],
        page.items.map((n) => h('tr', { 'data-node': n.name },
          h('td', {}, n.name, h('div', { class: 'mono muted' }, shortId(n.id))),
          h('td', {}, status(n.status)),
          h('td', {}, Object.entries(n.labels).map(([k, v]) => h('span', { class: 'tag' }, `${k}=${v}`))),
          h('td', {}, `${n.capacity.cpu_millis / 1000} CPU · ${bytes(n.capacity.memory_bytes)}${n.capacity.gpus ? ` · ${n.capacity.gpus} GPU` : ''}`),
          h('td', {}, n.executors.map((e) => h('span', { class: 'tag' }, e))),
          h('td', {}, when(n.last_heartbeat_at)),
          h('td', {}, n.status === 'ready'
            ? action('Drain', `/api/v1/nodes/${n.id}/drain`, { confirmText: `Drain ${n.name}? It takes no new work.` })
            : ''))),
        'No nodes have joined.'),
      pager(page.next_cursor)));
}

function select(name, options, value) {
  return h('select', {
    id: `filter-${name}`,
    'aria-label': name,
    onchange: (e) => setQuery({ [name]: e.target.value }),
  }, options.map((o) => h('option', { value: o, selected: o === value }, o || `any ${name}`)));
}

function search(value) {
  let timer;
  return h('input', {
    id: 'filter-name',
    type: 'search',
    placeholder: 'Search by name or paste an id',
    value,
    oninput: (e) => {
      clearTimeout(timer);
      timer = setTimeout(() => setQuery({ name: e.target.value.trim() }), 300);
    },
  });
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function jobTable(items) {
  return table(['Job', 'Status', 'Executor', 'Attempts', 'Created', 'Finished', ''],
    items.map((j) => h('tr', { 'data-job': j.id },
      h('td', {}, h('a', { href: `#/jobs/${j.id}` }, j.name), h('div', { class: 'mono muted' }, shortId(j.id))),
      h('td', {}, status(j.status)),
      h('td', {}, j.executor),
      h('td', {}, `${j.attempt_count}/${j.max_attempts}`),
      h('td', {}, when(j.created_at)),
      h('td', {}, when(j.finished_at)),
      h('td', {}, jobActions(j)))),
    'No jobs match.');
}

function jobActions(j) {
  if (j.status === 'queued' || j.status === 'running') return action('Cancel', `/api/v1/jobs/${j.id}/cancel`, { danger: true });
  if (j.status === 'failed' || j.status === 'cancelled') return action('Retry', `/api/v1/jobs/${j.id}/retry`);
  return '';
}

async function jobs(r) {
  if (r.id) return job(r.id);
  const filters = { status: r.query.get('status') || '', executor: r.query.get('executor') || '', name: r.query.get('name') || '' };
  if (UUID.test(filters.name)) { location.hash = `#/jobs/${filters.name}`; return h('div'); }
  const params = new URLSearchParams({ order: 'newest', limit: String(PAGE) });
  for (const [k, v] of Object.entries(filters)) if (v) params.set(k, v);
  const cursor = pageCursor(`jobs:${params}`);
  if (cursor) params.set('cursor', cursor);
  const [page, executors] = await Promise.all([api(`/api/v1/jobs?${params}`), api('/api/v1/executors')]);
  return h('div', {},
    h('h1', {}, 'Jobs'),
    h('div', { class: 'filters' },
      search(filters.name),
      select('status', ['', 'queued', 'running', 'succeeded', 'failed', 'cancelled'], filters.status),
      select('executor', [''].concat(executors.items.map((e) => e.name)), filters.executor)),
    h('div', { class: 'panel' }, jobTable(page.items), pager(page.next_cursor)));
}

function attemptsTable(attempts) {
  return table(['#', 'Status', 'Node', 'Started', 'Finished', 'Exit code', 'Error'],
    attempts.map((a) => h('tr', {},
      h('td', {}, a.number), h('td', {}, status(a.status)), h('td', { class: 'mono' }, shortId(a.node_id)),
      h('td', {}, when(a.started_at)), h('td', {}, when(a.finished_at)),
      h('td', {}, a.exit_code ?? '—'), h('td', {}, a.error || ''))),
    'No attempt yet.');
}

/** A log box that follows a job's log over SSE while the page is shown. */
function followLog(id) {
  const box = h('pre', { class: 'log', id: 'log' });
  const source = new EventSource(`/api/v1/jobs/${id}/logs?follow=true`);
  source.addEventListener('log', (e) => {
    const line = JSON.parse(e.data);
    const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    box.append(h('span', { class: line.stream }, `${line.line}\n`));
    if (atBottom) box.scrollTop = box.scrollHeight;
  });
  source.addEventListener('end', () => source.close());
  source.onerror = () => source.close();
  cleanup.push(() => source.close());
  return box;
}

let logBox = null;
async function job(id) {
  const j = await api(`/api/v1/jobs/${id}`);
  if (!logBox || logBox.dataset.job !== id) {
    logBox = followLog(id);
    logBox.dataset.job = id;
    cleanup.push(() => { logBox = null; });
  }
  return h('div', {},
    h('h1', {}, j.name, status(j.status), jobActions(j)),
    h('div', { class: 'panel' }, h('dl', { class: 'facts' },
      h('dt', {}, 'Id'), h('dd', { class: 'mono' }, j.id),
      h('dt', {}, 'Executor'), h('dd', {}, j.executor),
      h('dt', {}, 'Priority'), h('dd', {}, j.priority),
      h('dt', {}, 'Created'), h('dd', {}, when(j.created_at)),
      h('dt', {}, 'Started'), h('dd', {}, when(j.started_at)),
      h('dt', {}, 'Finished'), h('dd', {}, when(j.finished_at)),
      h('dt', {}, 'Error'), h('dd', {}, j.error || '—'),
      h('dt', {}, 'Spec'), h('dd', {}, json(j.spec)))),
    h('h2', {}, 'Attempts'),
    h('div', { class: 'panel' }, attemptsTable(j.attempts || [])),
    h('h2', {}, 'Output'),
    h('div', { class: 'panel' }, h('pre', { class: 'json' }, j.output || '—')),
    h('h2', {}, 'Log'),
    h('div', { class: 'panel' }, logBox));
}

function runTable(items) {
  return table(['Run', 'Type', 'Status', 'Created', 'Finished', ''],
    items.map((run) => h('tr', { 'data-run': run.id },
      h('td', {}, h('a', { href: `#/runs/${run.id}` }, run.name), h('div', { class: 'mono muted' }, shortId(run.id))),
      h('td', {}, `${run.type} v${run.version}`),
      h('td', {}, status(run.status)),
      h('td', {}, when(run.created_at)),
      h('td', {}, when(run.finished_at)),
      h('td', {}, runActions(run)))),
    'No runs match.');
}

function runActions(run) {
  if (run.status === 'running') return action('Cancel', `/api/v1/workflows/${run.id}/cancel`, { danger: true });
  if (run.status === 'failed' || run.status === 'cancelled') return action('Retry', `/api/v1/workflows/${run.id}/retry`);
  return '';
}

async function runs(r) {
  if (r.id) return run(r.id);
  const filters = { status: r.query.get('status') || '', type: r.query.get('type') || '', name: r.query.get('name') || '' };
  if (UUID.test(filters.name)) { location.hash = `#/runs/${filters.name}`; return h('div'); }
  const params = new URLSearchParams({ order: 'newest', limit: String(PAGE) });
  for (const [k, v] of Object.entries(filters)) if (v) params.set(k, v);
  const cursor = pageCursor(`runs:${params}`);
  if (cursor) params.set('cursor', cursor);
  const page = await api(`/api/v1/workflows?${params}`);
  return h('div', {},
    h('h1', {}, 'Workflow runs'),
    h('div', { class: 'filters' },
      search(filters.name),
      select('status', ['', 'running', 'succeeded', 'failed', 'cancelled'], filters.status),
      h('input', {
        id: 'filter-type', placeholder: 'Workflow type', value: filters.type,
        onchange: (e) => setQuery({ type: e.target.value.trim() }),
      })),
    h('div', { class: 'panel' }, runTable(page.items), pager(page.next_cursor)));
}

/** The run's DAG: columns by depth (longest path from a root), edges from needs. */
function dag(steps) {
  const depth = {};
  const byName = Object.fromEntries(steps.map((s) => [s.name, s]));
  const visit = (name, seen = new Set()) => {
    if (depth[name] !== undefined) return depth[name];
    if (seen.has(name)) return 0;
    seen.add(name);
    const needs = (byName[name] && byName[name].needs) || [];
    depth[name] = needs.length ? 1 + Math.max(...needs.map((n) => visit(n, seen))) : 0;
    return depth[name];
  };
  steps.forEach((s) => visit(s.name));
  const columns = [];
  for (const s of steps) (columns[depth[s.name]] ||= []).push(s);
  const W = 180; const H = 36; const GX = 70; const GY = 22;
  const pos = {};
  columns.forEach((col, x) => col.forEach((s, y) => { pos[s.name] = { x: 10 + x * (W + GX), y: 10 + y * (H + GY) }; }));
  const width = 20 + columns.length * (W + GX) - GX;
  const height = 20 + Math.max(...columns.map((c) => c.length)) * (H + GY) - GY;
  const edges = steps.flatMap((s) => (s.needs || []).filter((n) => pos[n]).map((n) => {
    const a = pos[n]; const b = pos[s.name];
    const x1 = a.x + W; const y1 = a.y + H / 2; const x2 = b.x; const y2 = b.y + H / 2;
    return svg('path', { class: 'edge', d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}`, 'marker-end': 'url(#arrow)' });
  }));
  const nodesEl = steps.map((s) => {
    const p = pos[s.name];
    const label = s.name.length > 22 ? `${s.name.slice(0, 21)}…` : s.name;
    return svg('g', {
      class: 'node', 'data-step': s.name, 'data-status': s.status, transform: `translate(${p.x},${p.y})`,
      onclick: () => { const row = document.getElementById(`step-${s.name}`); if (row) row.scrollIntoView({ behavior: 'smooth' }); },
    },
    svg('title', {}, `${s.name}: ${s.status}`),
    svg('rect', { width: W, height: H, fill: STATUS_COLORS[s.status] || '#8a93a6', stroke: '#0002' }),
    svg('text', { x: 10, y: H / 2 + 4 }, `${label} · ${s.status}`));
  });
  return svg('svg', { class: 'dag', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'The run as a graph of its steps' },
    svg('defs', {}, svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: 'auto' },
      svg('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#9aa3b5' }))),
    edges, nodesEl);
}

async function run(id) {
  const [r, logs] = await Promise.all([api(`/api/v1/workflows/${id}`), api(`/api/v1/workflows/${id}/logs?limit=500`)]);
  const logsByStep = {};
  for (const t of logs.tasks || []) (logsByStep[t.step.replace(/\[\d+\]$/, '')] ||= []).push(t);
  if (r.status === 'running') {
    // Logs arrive without events of their own: look again while the run runs.
    const timer = setTimeout(refreshSoon, 2000);
    cleanup.push(() => clearTimeout(timer));
  }
  return h('div', {},
    h('h1', {}, r.name, status(r.status), runActions(r)),
    h('div', { class: 'panel' }, h('dl', { class: 'facts' },
      h('dt', {}, 'Id'), h('dd', { class: 'mono' }, r.id),
      h('dt', {}, 'Type'), h('dd', {}, `${r.type} v${r.version}`),
      h('dt', {}, 'Created'), h('dd', {}, when(r.created_at)),
      h('dt', {}, 'Finished'), h('dd', {}, when(r.finished_at)),
      h('dt', {}, 'Input'), h('dd', {}, json(r.input)))),
    h('h2', {}, 'Graph'),
    h('div', { class: 'panel' }, dag(r.steps || [])),
    h('h2', {}, 'Steps'),
    (r.steps || []).map((s) => h('div', { class: 'panel', id: `step-${s.name}`, 'data-step': s.name },
      h('h2', { class: 'step-title' }, s.name, ' ', status(s.status),
        s.needs.length ? h('span', { class: 'muted' }, ` after ${s.needs.join(', ')}`) : ''),
      s.tasks.map((t) => h('div', {},
        s.tasks.length > 1 ? h('h3', {}, t.name, ' ', status(t.status)) : '',
        t.error ? h('p', {}, h('strong', {}, 'Error: '), t.error) : '',
        t.outputs ? h('div', {}, h('strong', {}, 'Outputs'), json(t.outputs)) : '',
        attemptsTable(t.attempts || []))),
      (logsByStep[s.name] || []).filter((t) => t.lines.length).map((t) => h('pre', { class: 'log' },
        t.lines.map((l) => h('span', { class: l.stream }, `${l.line}\n`)))))));
}

async function deployments(r) {
  if (r.id) return deployment(r.id);
  const params = new URLSearchParams({ limit: String(PAGE) });
  const cursor = pageCursor('deployments');
  if (cursor) params.set('cursor', cursor);
  const page = await api(`/api/v1/deployments?${params}`);
  return h('div', {},
    h('h1', {}, 'Deployments'),
    h('div', { class: 'panel' }, table(['Deployment', 'Composer', 'Environment', 'Status', 'Resources'],
      page.items.map((d) => h('tr', {},
        h('td', {}, h('a', { href: `#/deployments/${encodeURIComponent(d.id)}` }, d.id)),
        h('td', {}, d.composer ?? '—'), h('td', {}, d.environment ?? '—'),
        h('td', {}, status(d.status)),
        h('td', {}, (d.resources || []).map((x) => h('span', { class: 'tag' }, `${x.name}: ${x.status}`))))),
      'No deployments yet.'), pager(page.next_cursor)));
}

async function deployment(id) {
  const d = await api(`/api/v1/deployments/${encodeURIComponent(decodeURIComponent(id))}`);
  return h('div', {},
    h('h1', {}, d.id, status(d.status)),
    h('div', { class: 'panel' }, h('dl', { class: 'facts' },
      h('dt', {}, 'Composer'), h('dd', {}, d.composer ?? '—'),
      h('dt', {}, 'Environment'), h('dd', {}, d.environment ?? '—'),
      h('dt', {}, 'Run'), h('dd', {}, d.run_id ? h('a', { href: `#/runs/${d.run_id}` }, d.run_id) : '—'),
      h('dt', {}, 'Error'), h('dd', {}, d.error || '—'))),
    h('h2', {}, 'Resources'),
    h('div', { class: 'panel' }, table(['Resource', 'Engine', 'Status', 'Outputs', 'Error'],
      (d.resources || []).map((x) => h('tr', {},
        h('td', {}, x.name), h('td', {}, x.engine), h('td', {}, status(x.status)),
        h('td', {}, x.outputs && Object.keys(x.outputs).length ? json(x.outputs) : '—'),
        h('td', {}, x.error || ''))))));
}

async function schedules() {
  const params = new URLSearchParams({ limit: String(PAGE) });
  const cursor = pageCursor('schedules');
  if (cursor) params.set('cursor', cursor);
  const page = await api(`/api/v1/schedules?${params}`);
  return h('div', {},
    h('h1', {}, 'Schedules'),
    h('div', { class: 'panel' }, table(['Name', 'Cron', 'Executor', 'Next', 'Last', 'Last job'],
      page.items.map((s) => h('tr', {},
        h('td', {}, s.name), h('td', { class: 'mono' }, `${s.cron} (${s.timezone})`), h('td', {}, s.executor),
        h('td', {}, when(s.next_fire_at)), h('td', {}, when(s.last_fire_at)),
        h('td', {}, s.last_job_id ? h('a', { href: `#/jobs/${s.last_job_id}` }, shortId(s.last_job_id)) : '—'))),
      'No schedules.'), pager(page.next_cursor)));
}

async function webhooks() {
  const params = new URLSearchParams({ limit: String(PAGE) });
  const cursor = pageCursor('webhooks');
  if (cursor) params.set('cursor', cursor);
  const page = await api(`/api/v1/webhook-deliveries?${params}`);
  const started = (runs) => (runs || []).map((x) => {
    if (x.run_id) return h('a', { class: 'tag', href: `#/runs/${x.run_id}` }, x.rule || 'run');
    if (x.job_id) return h('a', { class: 'tag', href: `#/jobs/${x.job_id}` }, x.rule || 'job');
    return h('span', { class: 'tag' }, `${x.rule || ''} ${x.error || ''}`);
  });
  return h('div', {},
    h('h1', {}, 'Webhook deliveries'),
    h('div', { class: 'panel' }, table(['Delivery', 'Event', 'Repository', 'Verdict', 'Started', 'Received'],
      page.items.map((d) => h('tr', {},
        h('td', { class: 'mono' }, d.id), h('td', {}, d.action ? `${d.event}.${d.action}` : d.event),
        h('td', {}, d.repository || '—'), h('td', {}, status(d.verdict), d.reason ? h('div', { class: 'muted' }, d.reason) : ''),
        h('td', {}, started(d.runs)), h('td', {}, when(d.received_at)))),
      'No deliveries yet.'), pager(page.next_cursor)));
}

const VIEWS = { overview, nodes, jobs, runs, deployments, schedules, webhooks };

/** Starts the dashboard once a session is known; otherwise shows the sign-in page. */
async function start() {
  try {
    const me = await api('/api/v1/session');
    session.csrf = me.csrf_token || null;
  } catch (e) {
    signIn();
    return;
  }
  const out = document.getElementById('sign-out');
  if (out) { out.hidden = false; out.onclick = signOut; }
  connectEvents();
  refresh();
}

start();
