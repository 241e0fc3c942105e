// The page: wires the store, the event stream and the three views, routes
// by URL hash (#/, #/w/<name>, #/daemon), asks for the token when the
// daemon wants one, and shows whether the stream is connected.

import { getJson, onUnauthorized, post, setToken, token, Unauthorized } from './api.js';
import { DaemonView } from './daemon.js';
import { Detail } from './detail.js';
import { bytes, percent, toast } from './format.js';
import { LiveStream } from './live.js';
import { Overview } from './overview.js';
import { Store } from './store.js';

const store = new Store();
const $ = (id) => document.getElementById(id);
const views = { overview: $('view-overview'), detail: $('view-detail'), daemon: $('view-daemon') };
const stats = { firstRenderMs: null, navigationStart: 0 };

const meta = { version: null, live: null };
let detail = null;
let lastDetail = null;

/** Runs start|stop|restart on `name`; says so when there was nothing to do or it failed. */
async function act(name, action, button) {
  if (button) button.setAttribute('aria-busy', 'true');
  try {
    const { status, body } = await post(`/api/workspaces/${encodeURIComponent(name)}/${action}`);
    if (status === 200) toast(`${name} is already ${action === 'start' ? 'running' : 'stopped'}`);
    else if (body) store.refresh(name);
  } catch (error) {
    if (!(error instanceof Unauthorized)) toast(`${action} ${name} failed: ${error.message}`, 'error');
  } finally {
    if (button) button.removeAttribute('aria-busy');
  }
}

const overview = new Overview(views.overview, store, act);
const daemon = new DaemonView(views.daemon, store, meta);

// After a reconnect the list is read once more. Last-Event-ID replays what
// was missed, but a daemon that restarted counts seq from 1 again, so an id
// from its previous run can match the new ring and replay the wrong events.
let opened = false;
const live = new LiveStream('/api/events', {
  onEvent: (event) => store.onEvent(event),
  onState: (state, since) => showConnection(state, since),
  onOpen: () => {
    if (opened) store.scheduleReload();
    opened = true;
  },
});
meta.live = live;

function showConnection(state, since) {
  const conn = $('conn');
  conn.dataset.state = state;
  const text = {
    connecting: 'connecting…',
    live: 'live',
    down: `disconnected since ${new Date(since).toLocaleTimeString()}, reconnecting…`,
    stopped: 'not connected',
  }[state];
  conn.querySelector('.conn-text').textContent = text;
  conn.title = state === 'live' ? 'Following /api/events' : text;
  document.body.classList.toggle('offline', state === 'down');
}

/** The header's totals: counts that need attention and total resource use. */
function renderTotals() {
  const r = store.resources;
  const parts = [];
  if (r) parts.push(`RSS ${bytes(r.totals.rssBytes)}`, `CPU ${percent(r.totals.cpuPercent)}`);
  const text = parts.join(' · ');
  const box = $('totals');
  if (box.textContent !== text) box.textContent = text;
}
store.subscribe((kind, name) => {
  if (kind === 'resources' && name == null) renderTotals();
});

function route() {
  const hash = decodeURIComponent(location.hash.replace(/^#/, '')) || '/';
  const [pathPart, query = ''] = hash.split('?');
  const params = new URLSearchParams(query);
  let view = 'overview';
  let name = null;
  if (pathPart.startsWith('/w/')) {
    view = 'detail';
    name = pathPart.slice(3);
  } else if (pathPart === '/daemon') {
    view = 'daemon';
  }
  if (detail && (view !== 'detail' || detail.name !== name)) {
    detail.close();
    detail = null;
  }
  for (const [key, section] of Object.entries(views)) section.hidden = key !== view;
  for (const link of document.querySelectorAll('[data-nav]')) {
    const current = link.dataset.nav === (view === 'detail' ? 'overview' : view);
    if (current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (view === 'detail' && !detail) {
    detail = new Detail(views.detail, store, act, name);
    lastDetail = name;
    document.title = `${name} · mcpvisor`;
    views.detail.querySelector('h1')?.focus?.();
  } else if (view === 'daemon') {
    document.title = 'Daemon · mcpvisor';
    daemon.show();
  } else if (view === 'overview') {
    document.title = 'mcpvisor';
    if (params.has('status')) overview.setGroup(params.get('status'));
    overview.flush();
    if (lastDetail) {
      overview.focusRow(lastDetail);
      lastDetail = null;
    }
  }
}

document.addEventListener('keydown', (event) => {
  const typing = event.target.closest?.('input, textarea, select, [contenteditable]');
  if (event.key === '/' && !typing && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    if (!views.overview.hidden) overview.focusFilter();
    else location.hash = '#/';
  } else if (event.key === 'Escape' && !views.detail.hidden && !$('token-dialog').open) {
    location.hash = '#/';
  }
});

// Token: asked once, kept for the tab (sessionStorage).
const dialog = $('token-dialog');
let asking = false;
onUnauthorized(() => {
  if (asking) return;
  asking = true;
  live.stop();
  store.stopPolling();
  $('token-error').hidden = !token();
  showConnection('stopped');
  if (!dialog.open) dialog.showModal();
  $('token-input').focus();
});
$('token-form').addEventListener('submit', () => {
  setToken($('token-input').value.trim());
  $('token-input').value = '';
  asking = false;
  $('forget-token').hidden = !token();
  connect();
});
dialog.addEventListener('cancel', (event) => event.preventDefault());
$('forget-token').hidden = !token();
$('forget-token').addEventListener('click', () => {
  setToken('');
  location.reload();
});

/** Loads the list and follows the stream (again, after a token was given). */
async function connect() {
  live.start();
  try {
    await store.loadAll();
  } catch (error) {
    if (!(error instanceof Unauthorized)) {
      toast(`Cannot read workspaces: ${error.message}`, 'error');
      setTimeout(connect, 2000);
    }
    return;
  }
  store.startPolling();
  if (views.overview.hidden) painted();
  if (!meta.version) {
    getJson('/healthz')
      .then((h) => {
        meta.version = h.version ?? null;
        $('version').textContent = h.version ? `v${h.version}` : '';
      })
      .catch(() => {});
  }
}

/** Notes when the first screen is painted: `firstRenderMs` after navigation start, and `data-ready` on the body. */
function painted() {
  if (document.body.dataset.ready) return;
  // Called in the frame that paints; the timeout runs once it is painted.
  requestAnimationFrame(() =>
    setTimeout(() => {
      stats.firstRenderMs ??= performance.now();
      document.body.dataset.ready = 'true';
    }),
  );
}
overview.onFirstRender = painted;

// A page kept in the back/forward cache must not hold its streams open: the
// browser allows six connections per host, and the daemon would count a
// subscriber nobody reads. Coming back resumes with Last-Event-ID.
window.addEventListener('pagehide', () => {
  live.stop();
  detail?.pause();
  store.stopPolling();
});
window.addEventListener('pageshow', (event) => {
  if (!event.persisted) return;
  detail?.resume();
  connect();
});

window.addEventListener('hashchange', route);
route();
connect();

// For tests and for looking inside from the console.
window.mcpvisor = { store, stats: Object.assign(stats, { store: store.stats }), live, overview };
