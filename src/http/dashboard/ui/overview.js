// The overview: one row per workspace, updated in place.
//
// Rows are keyed by workspace name, built when first shown and kept; a
// change marks its row dirty and the next animation frame rewrites only the
// cells whose text changed, so a burst of events costs one layout per frame.
// Only the rows in and near the viewport are in the document (fixed-height
// rows between two spacers), so 1,000 workspaces cost what 40 do; the
// filter finds the others. Work that only matters on screen (ticking
// uptimes and countdowns, sparklines, loading a row's resource history) is
// done for those rows only.

import { badge, badgeTitle, bytes, duration, el, group, percent } from './format.js';
import { draw, sparkline } from './sparkline.js';

/** Rows kept in the document above and below the viewport. */
const OVERSCAN = 12;

/** The height of a row in px, as the stylesheet sets it (measured again after the first render). */
const ROW_HEIGHT = 34;

/** An error badge stays red at least this long, so a crash that restarts at once is still seen. */
const RED_AT_LEAST_MS = 800;

const GROUPS = [
  ['all', 'All'],
  ['running', 'Running'],
  ['degraded', 'Degraded'],
  ['error', 'Error'],
  ['transition', 'Starting/stopping'],
  ['stopped', 'Stopped'],
];

/** Sort order of the status column: what needs attention first. */
const GROUP_RANK = { error: 0, degraded: 1, transition: 2, running: 3, stopped: 4 };

const COLUMNS = [
  { key: 'name', label: 'Workspace', sort: (w) => w.workspace },
  { key: 'status', label: 'Status', sort: (w) => GROUP_RANK[group(w)] },
  { key: 'uptime', label: 'Uptime', sort: (w, store) => store.uptime(w) ?? -1 },
  { key: 'restarts', label: 'Restarts', sort: (w) => w.restartCount ?? 0 },
  { key: 'breaker', label: 'Breaker' },
  { key: 'port', label: 'Port', sort: (w) => w.port ?? 0 },
  { key: 'transport', label: 'Transport' },
  { key: 'sessions', label: 'Sessions', sort: (w) => w.sessions ?? 0 },
  { key: 'rss', label: 'RSS', sort: (w) => w.resources?.rssBytes ?? -1 },
  { key: 'cpu', label: 'CPU', sort: (w) => w.resources?.cpuPercent ?? -1 },
  { key: 'actions', label: 'Actions' },
];

const ACTIONS = [
  ['start', '▶', 'Start'],
  ['stop', '■', 'Stop'],
  ['restart', '↻', 'Restart'],
];

let template = null;

/** The row every workspace's row is cloned from. */
function rowTemplate() {
  if (template) return template;
  template = el(
    'tr',
    {},
    el('td', { class: 'c-name' }, el('a', { class: 'name' }), el('span', { class: 'tags' })),
    el('td', { class: 'c-status' }, el('span', { class: 'badge' }, el('span', { class: 'badge-dot' }), el('span', { class: 'badge-text' }))),
    el('td', { class: 'c-uptime num' }),
    el('td', { class: 'c-restarts num' }),
    el('td', { class: 'c-breaker' }),
    el('td', { class: 'c-port num' }),
    el('td', { class: 'c-transport' }),
    el('td', { class: 'c-sessions num' }),
    el('td', { class: 'c-rss' }, el('div', { class: 'rc' }, el('span', { class: 'v num' }))),
    el('td', { class: 'c-cpu' }, el('div', { class: 'rc' }, el('span', { class: 'v num' }))),
    el(
      'td',
      { class: 'c-actions' },
      ...ACTIONS.map(([action, symbol]) => el('button', { type: 'button', class: 'icon', 'data-action': action }, symbol)),
    ),
  );
  return template;
}

/** One workspace's row; it remembers what it shows and touches the DOM only when that changes. */
class Row {
  constructor(name) {
    this.name = name;
    this.tr = rowTemplate().cloneNode(true);
    this.tr.dataset.workspace = name;
    const [cName, cStatus, cUptime, cRestarts, cBreaker, cPort, cTransport, cSessions, cRss, cCpu, cActions] = this.tr.children;
    this.link = cName.firstChild;
    this.link.href = `#/w/${encodeURIComponent(name)}`;
    this.link.textContent = name;
    this.link.title = name;
    this.tags = cName.lastChild;
    this.badge = cStatus.firstChild;
    this.badgeText = this.badge.lastChild;
    Object.assign(this, { cUptime, cRestarts, cBreaker, cPort, cTransport, cSessions });
    this.rssBox = cRss.firstChild;
    this.cpuBox = cCpu.firstChild;
    this.buttons = {};
    for (const button of cActions.children) {
      const action = button.dataset.action;
      const label = ACTIONS.find((a) => a[0] === action)[2];
      button.setAttribute('aria-label', `${label} ${name}`);
      button.title = label;
      this.buttons[action] = button;
    }
    this.shown = {};
    this.redSince = 0;
    this.failuresShown = null;
    this.sparks = null;
  }

  /** Sets `shown[key]` to `value` and calls `apply` when it changed. */
  put(key, value, apply) {
    if (this.shown[key] === value) return;
    this.shown[key] = value;
    apply(value);
  }

  /** Brings the row up to `w`; returns ms after which it must be drawn again (a red badge held), or 0. */
  update(w, store) {
    const now = performance.now();
    let again = 0;
    let b = badge(w);
    // A row drawn for the first time (or scrolled into view) shows what is,
    // not failures from before it existed.
    const failures = w.failures ?? 0;
    const unseenFailure = this.failuresShown != null && failures > this.failuresShown;
    this.failuresShown = failures;
    if (unseenFailure && b.tone !== 'red') {
      // The failure came and went between two frames: show it all the same.
      b = { tone: 'red', label: 'error' };
      again = RED_AT_LEAST_MS;
    }
    if (this.shown.tone === 'red' && b.tone !== 'red' && now - this.redSince < RED_AT_LEAST_MS) {
      again = RED_AT_LEAST_MS - (now - this.redSince);
      b = { tone: 'red', label: this.shown.label };
    }
    if (b.tone === 'red' && this.shown.tone !== 'red') this.redSince = now;
    this.put('tone', b.tone, (tone) => {
      this.badge.className = `badge ${tone}`;
      this.tr.dataset.tone = tone;
    });
    this.put('label', b.label, (label) => {
      this.badgeText.textContent = label;
    });
    this.tr.dataset.status = w.status;
    this.put('title', badgeTitle(w), (title) => {
      this.badge.title = title;
    });
    const tags = [w.enabled === false ? 'disabled' : '', w.configError ? 'config error' : ''].filter(Boolean).join(' · ');
    this.put('tags', tags, (text) => {
      this.tags.textContent = text;
    });
    const uptime = store.uptime(w);
    this.put('uptime', uptime == null ? '—' : duration(uptime), (text) => {
      this.cUptime.textContent = text;
    });
    this.put('restarts', String(w.restartCount ?? 0), (text) => {
      this.cRestarts.textContent = text;
    });
    this.put('breaker', breakerText(w.breaker), (text) => {
      this.cBreaker.textContent = text;
      this.cBreaker.className = `c-breaker b-${w.breaker?.state ?? 'closed'}`;
    });
    this.put('breakerTitle', breakerTitle(w.breaker), (title) => {
      this.cBreaker.title = title;
    });
    this.put('port', w.port == null ? '—' : String(w.port), (text) => {
      this.cPort.textContent = text;
    });
    this.put('transport', w.transport ?? '', (text) => {
      this.cTransport.textContent = text;
    });
    this.put('sessions', String(w.sessions ?? 0), (text) => {
      this.cSessions.textContent = text;
      this.cSessions.classList.toggle('muted', text === '0');
    });
    this.put('rss', w.resources ? bytes(w.resources.rssBytes) : '—', (text) => {
      this.rssBox.firstChild.textContent = text;
    });
    this.put('cpu', w.resources ? percent(w.resources.cpuPercent) : '—', (text) => {
      this.cpuBox.firstChild.textContent = text;
    });
    const active = w.status === 'running' || w.status === 'starting';
    this.put('canStart', !active, (on) => {
      this.buttons.start.disabled = !on;
    });
    this.put('canStop', w.status !== 'stopped', (on) => {
      this.buttons.stop.disabled = !on;
    });
    this.drawSparks(w);
    return again;
  }

  drawSparks(w) {
    const last = w.history[w.history.length - 1];
    const key = w.history.length ? `${w.history.length}:${last.t}` : '';
    if (!key && !this.sparks) return;
    this.put('spark', key, () => {
      if (!this.sparks) {
        this.sparks = { rss: sparkline(56, 18, `RSS of ${this.name}`), cpu: sparkline(56, 18, `CPU of ${this.name}`) };
        this.rssBox.append(this.sparks.rss);
        this.cpuBox.append(this.sparks.cpu);
      }
      draw(this.sparks.rss, w.history.map((p) => ({ t: p.t, v: p.rss })), { floor: 1 << 20 });
      draw(this.sparks.cpu, w.history.map((p) => ({ t: p.t, v: p.cpu })), { floor: 1 });
    });
  }
}

function breakerTitle(breaker) {
  if (!breaker || breaker.state === 'closed') return '';
  const failures = `${breaker.failureCount} consecutive failures`;
  return breaker.nextRetryAt ? `${failures}; next trial start at ${new Date(breaker.nextRetryAt).toLocaleTimeString()}` : failures;
}

function breakerText(breaker) {
  if (!breaker || breaker.state === 'closed') return 'closed';
  if (breaker.state === 'open' && breaker.nextRetryAt) {
    const left = Date.parse(breaker.nextRetryAt) - Date.now();
    return left > 0 ? `open · ${duration(left + 999)}` : 'open · retrying';
  }
  return breaker.state;
}

export class Overview {
  /** `root`: the section to render into; `store`; `act(name, action, button)` runs a command. */
  constructor(root, store, act) {
    this.root = root;
    this.store = store;
    this.act = act;
    this.rows = new Map();
    this.order = [];
    this.attached = [];
    this.dirty = new Set();
    this.structure = true;
    this.resort = false;
    this.frame = 0;
    this.rowHeight = ROW_HEIGHT;
    this.filterText = '';
    this.filterGroup = 'all';
    this.sortKey = 'name';
    this.sortDir = 1;
    this.onFirstRender = null;
    this.build();
    store.subscribe((kind, name) => this.onChange(kind, name));
    window.addEventListener('scroll', () => this.schedule(), { passive: true });
    window.addEventListener('resize', () => this.schedule());
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  build() {
    this.filterInput = el('input', {
      type: 'search',
      id: 'filter',
      placeholder: 'Filter by name   ( / )',
      'aria-label': 'Filter workspaces by name',
      autocomplete: 'off',
      spellcheck: 'false',
      oninput: () => {
        this.filterText = this.filterInput.value.trim().toLowerCase();
        this.refilter();
      },
      // Enter or arrow down goes from the filter to the first row shown.
      onkeydown: (event) => {
        if ((event.key === 'Enter' || event.key === 'ArrowDown') && this.order.length) {
          event.preventDefault();
          this.focusRow(this.order[0]);
        }
      },
    });
    this.chips = el('div', { class: 'chips', role: 'group', 'aria-label': 'Filter by status' });
    this.chipButtons = {};
    for (const [key, label] of GROUPS) {
      const button = el(
        'button',
        { type: 'button', class: `chip chip-${key}`, 'data-group': key, 'aria-pressed': String(key === 'all') },
        el('span', { class: 'chip-label' }, label),
        ' ',
        el('span', { class: 'chip-count num' }),
      );
      button.addEventListener('click', () => this.setGroup(key));
      this.chipButtons[key] = button;
      this.chips.append(button);
    }
    this.shownCount = el('span', { class: 'shown', 'aria-live': 'polite' });
    const head = el('tr', { 'aria-rowindex': '1' });
    this.headers = {};
    for (const column of COLUMNS) {
      const th = el('th', { scope: 'col', class: `c-${column.key}` });
      if (column.sort) {
        const button = el('button', { type: 'button', class: 'sort' }, column.label);
        button.addEventListener('click', () => this.setSort(column.key));
        th.append(button);
        th.setAttribute('aria-sort', column.key === 'name' ? 'ascending' : 'none');
      } else {
        th.append(column.key === 'actions' ? el('span', { class: 'sr-only' }, column.label) : column.label);
      }
      this.headers[column.key] = th;
      head.append(th);
    }
    const spacer = () => el('tr', { class: 'spacer', 'aria-hidden': 'true' }, el('td', { colspan: String(COLUMNS.length) }));
    this.above = spacer();
    this.below = spacer();
    this.tbody = el('tbody', {}, this.above, this.below);
    this.tbody.addEventListener('click', (event) => {
      const button = event.target.closest('button[data-action]');
      if (!button) return;
      const name = button.closest('tr').dataset.workspace;
      this.act(name, button.dataset.action, button);
    });
    this.tbody.addEventListener('keydown', (event) => this.onKey(event));
    this.table = el('table', { class: 'grid', id: 'workspaces' }, el('thead', {}, head), this.tbody);
    this.empty = el('p', { class: 'empty', hidden: true }, 'No workspace matches the filter.');
    this.loading = el('p', { class: 'empty' }, 'Loading workspaces…');
    this.root.append(
      el('div', { class: 'toolbar' }, this.filterInput, this.chips, this.shownCount),
      el('div', { class: 'table-wrap' }, this.table),
      this.empty,
      this.loading,
    );
  }

  onChange(kind, name) {
    if (kind === 'structure') this.structure = true;
    else if (kind === 'workspace' || (kind === 'resources' && name)) this.dirty.add(name);
    if (this.sortKey !== 'name' && (kind === 'workspace' || (kind === 'resources' && !name))) this.resort = true;
    // A status change can move a row in or out of the status filter.
    if (kind === 'workspace' && this.filterGroup !== 'all') this.resort = true;
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  /** Applies every pending change; the one place rows are written. */
  flush() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    if (this.root.hidden) return;
    const counts = this.structure || this.dirty.size > 0;
    if (this.structure || this.resort) this.arrange();
    this.renderWindow();
    if (counts) this.updateCounts();
    if (this.onFirstRender && this.store.loaded) {
      const done = this.onFirstRender;
      this.onFirstRender = null;
      done();
    }
  }

  /** Filters and sorts the names into `order`, the rows the table would show if it were all on screen. */
  arrange() {
    this.structure = false;
    this.resort = false;
    for (const [name, row] of this.rows) {
      if (this.store.get(name)) continue;
      row.tr.remove();
      this.rows.delete(name);
    }
    const workspaces = this.store.list().filter((w) => this.matches(w));
    if (this.sortKey !== 'name') {
      const key = COLUMNS.find((c) => c.key === this.sortKey).sort;
      const value = new Map(workspaces.map((w) => [w.workspace, key(w, this.store)]));
      const by = (a, b) => {
        const x = value.get(a.workspace);
        const y = value.get(b.workspace);
        return (x < y ? -1 : x > y ? 1 : a.workspace < b.workspace ? -1 : 1) * this.sortDir;
      };
      workspaces.sort(by);
    } else if (this.sortDir < 0) {
      workspaces.reverse();
    }
    this.order = workspaces.map((w) => w.workspace);
    this.table.setAttribute('aria-rowcount', String(this.order.length + 1));
    const total = this.store.workspaces.size;
    this.loading.hidden = this.store.loaded;
    this.empty.hidden = this.order.length > 0 || !this.store.loaded || total === 0;
    this.shownCount.textContent = this.order.length === total ? `${total} workspaces` : `${this.order.length} of ${total} shown`;
  }

  /** Puts the rows in and near the viewport into the table, and brings them up to date. */
  renderWindow() {
    const h = this.rowHeight;
    // Row i sits at i * h below the top of the body, whatever the spacers hold.
    const top = this.tbody.getBoundingClientRect().top;
    const firstVisible = Math.floor(Math.max(0, -top) / h);
    const start = Math.max(0, firstVisible - OVERSCAN);
    const end = Math.min(this.order.length, firstVisible + Math.ceil(window.innerHeight / h) + OVERSCAN);
    const names = this.order.slice(start, end);
    const wanted = new Set(names);
    // Detach what left the window; rows that stay are not moved, so a focused one keeps focus.
    for (const name of this.attached) {
      if (!wanted.has(name)) this.rows.get(name)?.tr.remove();
    }
    const fresh = new Set();
    let cursor = this.above.nextSibling;
    for (const [i, name] of names.entries()) {
      let row = this.rows.get(name);
      if (!row) {
        row = new Row(name);
        this.rows.set(name, row);
      }
      if (row.tr !== cursor) {
        this.tbody.insertBefore(row.tr, cursor);
        fresh.add(name);
      } else {
        cursor = cursor.nextSibling;
      }
      row.tr.setAttribute('aria-rowindex', String(start + i + 2));
    }
    this.above.firstChild.style.height = `${start * h}px`;
    this.below.firstChild.style.height = `${(this.order.length - end) * h}px`;
    this.attached = names;
    for (const name of names) {
      if (!fresh.has(name) && !this.dirty.has(name)) continue;
      const w = this.store.get(name);
      const row = this.rows.get(name);
      const again = row.update(w, this.store);
      if (again) setTimeout(() => this.onChange('workspace', name), again);
      if (w.pid != null || w.resources) this.store.seed(name);
    }
    this.dirty.clear();
    // Rows are as high as the stylesheet says; measure once in case fonts differ.
    const first = names.length && this.rows.get(names[0]).tr.offsetHeight;
    if (first && Math.abs(first - h) > 0.5) {
      this.rowHeight = first;
      this.schedule();
    }
  }

  matches(w) {
    if (this.filterText && !w.workspace.includes(this.filterText)) return false;
    return this.filterGroup === 'all' || group(w) === this.filterGroup;
  }

  refilter() {
    this.resort = true;
    this.flush();
  }

  updateCounts() {
    const counts = this.store.counts(group);
    counts.all = this.store.workspaces.size;
    for (const [key, button] of Object.entries(this.chipButtons)) {
      const text = String(counts[key]);
      const span = button.lastChild;
      if (span.textContent !== text) span.textContent = text;
    }
  }

  setGroup(key) {
    if (!this.chipButtons[key]) return;
    this.filterGroup = key;
    for (const [k, button] of Object.entries(this.chipButtons)) button.setAttribute('aria-pressed', String(k === key));
    this.refilter();
  }

  setSort(key) {
    if (this.sortKey === key) this.sortDir = -this.sortDir;
    else {
      this.sortKey = key;
      this.sortDir = key === 'name' ? 1 : -1;
    }
    for (const [k, th] of Object.entries(this.headers)) {
      if (!th.hasAttribute('aria-sort')) continue;
      th.setAttribute('aria-sort', k === key ? (this.sortDir > 0 ? 'ascending' : 'descending') : 'none');
    }
    this.refilter();
  }

  /** Once a second: what ticks on the rows shown (uptime, breaker countdown). */
  tick() {
    if (document.visibilityState !== 'visible' || this.root.hidden) return;
    for (const name of this.attached) {
      const w = this.store.get(name);
      if (w && (w.status === 'running' || w.breaker?.state === 'open')) this.dirty.add(name);
    }
    if (this.dirty.size) this.schedule();
  }

  /** Arrow keys (and j/k) move between rows, keeping the column. */
  onKey(event) {
    const keys = { ArrowDown: 1, j: 1, ArrowUp: -1, k: -1 };
    const step = keys[event.key];
    if (!step || event.altKey || event.ctrlKey || event.metaKey) return;
    const tr = event.target.closest('tr[data-workspace]');
    if (!tr) return;
    const column = [...tr.querySelectorAll('a, button')].indexOf(event.target);
    const next = this.order[this.order.indexOf(tr.dataset.workspace) + step];
    if (!next) return;
    event.preventDefault();
    this.focusRow(next, column);
  }

  focusFilter() {
    this.filterInput.focus();
    this.filterInput.select();
  }

  /** Scrolls a workspace's row into the window if needed and focuses its `column`th control (its link by default). */
  focusRow(name, column = 0) {
    const i = this.order.indexOf(name);
    if (i < 0) return;
    if (!this.attached.includes(name)) {
      const tableTop = this.tbody.getBoundingClientRect().top + window.scrollY;
      window.scrollTo(0, tableTop + i * this.rowHeight - window.innerHeight / 2);
      this.flush();
    }
    const row = this.rows.get(name);
    if (!row) return;
    const targets = [...row.tr.querySelectorAll('a, button')];
    const target = targets[Math.max(0, column)];
    (target && !target.disabled ? target : row.link).focus();
  }
}
