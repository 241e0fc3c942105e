// The daemon itself: version and readiness, workspaces by status, total
// resources and ports, the system check (`/api/debug/validate`, shown only
// where the daemon has it), invalid files, and links to the raw endpoints.

import { getJson, request, token } from './api.js';
import { ago, bytes, el, group, percent } from './format.js';

const LINKS = [
  ['/metrics', 'Prometheus metrics'],
  ['/api/workspaces', 'Workspaces (JSON)'],
  ['/api/debug/state', 'Debug state (JSON)'],
  ['/healthz', 'Liveness'],
  ['/readyz', 'Readiness'],
];

const GROUP_LABELS = { running: 'running', degraded: 'degraded', error: 'error', transition: 'starting/stopping', stopped: 'stopped' };

/** Opens `href` in a new tab; with a token, fetches it first, since a plain link cannot send the header. */
async function openRaw(event, href) {
  if (!token()) return;
  event.preventDefault();
  const response = await request(href, { accept: '*/*' });
  const blob = new Blob([await response.text()], { type: 'text/plain;charset=utf-8' });
  window.open(URL.createObjectURL(blob), '_blank', 'noopener');
}

export class DaemonView {
  constructor(root, store, meta) {
    this.root = root;
    this.store = store;
    this.meta = meta;
    this.frame = 0;
    this.about = el('dl', { class: 'facts' });
    this.counts = el('div', { class: 'bars' });
    this.resources = el('dl', { class: 'facts' });
    this.validate = el('section', { class: 'card', id: 'validate', hidden: true });
    this.problems = el('div', {}, el('p', { class: 'muted' }, 'Loading…'));
    const links = el(
      'ul',
      { class: 'links' },
      ...LINKS.map(([href, label]) => el('li', {}, el('a', { href, target: '_blank', rel: 'noopener', onclick: (e) => openRaw(e, href) }, label), ' ', el('code', {}, href))),
    );
    root.append(
      el('h1', {}, 'Daemon'),
      el(
        'div',
        { class: 'cols' },
        el('section', { class: 'card' }, el('h2', {}, 'mcpvisor'), this.about),
        el('section', { class: 'card' }, el('h2', {}, 'Workspaces'), this.counts),
      ),
      el(
        'div',
        { class: 'cols' },
        el('section', { class: 'card' }, el('h2', {}, 'Resources'), this.resources),
        el('section', { class: 'card' }, el('h2', {}, 'Endpoints'), links),
      ),
      this.validate,
      el('section', { class: 'card' }, el('h2', {}, 'Invalid files and watcher'), this.problems),
    );
    store.subscribe(() => this.schedule());
  }

  schedule() {
    if (!this.frame && !this.root.hidden) this.frame = requestAnimationFrame(() => this.render());
  }

  /** Called when the view is shown: loads what is not streamed. */
  async show() {
    this.render();
    const [ready, errors, validate] = await Promise.all([
      request('/readyz').then((r) => r.json()).catch(() => null),
      getJson('/api/debug/state/errors').catch(() => null),
      request('/api/debug/validate').then((r) => (r.status === 200 ? r.json() : null)).catch(() => null),
    ]);
    this.ready = ready;
    this.renderProblems(errors);
    this.renderValidate(validate);
    this.render();
  }

  render() {
    this.frame = 0;
    const s = this.store;
    const live = this.meta.live;
    const rows = [
      ['version', this.meta.version ?? '—'],
      ['readiness', this.ready ? this.ready.status : '—'],
      ['event stream', live.state === 'live' ? `live since ${ago(new Date(live.since).toISOString())}` : live.state],
      ['last event seq', s.stats.lastSeq || '—'],
      ['SSE subscribers', s.connections ? s.connections.subscribers.length : '—'],
      ['MCP sessions', s.connections ? s.connections.proxySessions.length : '—'],
    ];
    this.about.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, String(v))]));

    const counts = s.counts(group);
    const total = s.workspaces.size || 1;
    this.counts.replaceChildren(
      el('p', {}, `${s.workspaces.size} workspaces`),
      ...Object.entries(GROUP_LABELS).map(([key, label]) => {
        const bar = el('span', { class: `bar-fill g-${key}` });
        bar.style.width = `${(100 * counts[key]) / total}%`;
        return el('div', { class: 'bar-row' }, el('a', { href: `#/?status=${key}` }, label), el('span', { class: 'bar' }, bar), el('span', { class: 'num' }, counts[key]));
      }),
    );

    const r = s.resources;
    const resourceRows = r
      ? [
          ['RSS', bytes(r.totals.rssBytes)],
          ['CPU', percent(r.totals.cpuPercent)],
          ['processes', r.totals.processes],
          ['sampled', r.sampledAt ? ago(r.sampledAt) : '—'],
          ['port range', r.portRange ? r.portRange.join('–') : '—'],
          ['ports allocated', r.allocations ? Object.keys(r.allocations).length : '—'],
        ]
      : [['resources', 'Loading…']];
    this.resources.replaceChildren(...resourceRows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, String(v))]));
  }

  renderValidate(result) {
    if (!result) {
      this.validate.hidden = true;
      return;
    }
    const issues = result.issues ?? [];
    this.validate.hidden = false;
    this.validate.replaceChildren(
      el('h2', {}, 'System check'),
      el('p', { class: result.ok ? 'ok' : 'error' }, result.ok ? 'No error-severity issue.' : 'There are errors to fix.'),
      issues.length
        ? el(
            'table',
            { class: 'small' },
            el('thead', {}, el('tr', {}, ...['severity', 'component', 'workspace', 'issue', 'hint'].map((h) => el('th', { scope: 'col' }, h)))),
            el('tbody', {}, ...issues.map((i) => el('tr', { class: `sev-${i.severity}` }, el('td', {}, i.severity), el('td', {}, i.component), el('td', {}, i.workspace ?? ''), el('td', {}, i.issue), el('td', {}, i.hint ?? '')))),
          )
        : el('p', { class: 'muted' }, 'No issues.'),
    );
  }

  renderProblems(errors) {
    if (!errors) {
      this.problems.replaceChildren(el('p', { class: 'muted' }, 'Not available.'));
      return;
    }
    const files = errors.invalidFiles ?? [];
    const parts = [];
    if (this.ready?.watchError || errors.watcher) parts.push(el('p', { class: 'error' }, `Watcher: ${this.ready?.watchError ?? errors.watcher}`));
    if (!files.length) parts.push(el('p', { class: 'muted' }, 'Every workspace file is valid.'));
    for (const f of files) parts.push(el('pre', { class: 'stderr' }, typeof f === 'string' ? f : JSON.stringify(f, null, 2)));
    this.problems.replaceChildren(...parts);
  }
}
