// One workspace in full: its status, resources, live log tail, event
// timeline, last errors with stderr tails, MCP sessions with pending
// requests, and its config (with history, diff and rollback where the
// daemon has the config API).

import { getJson, HttpError, request } from './api.js';
import { diffLines } from './diff.js';
import { ago, badge, badgeTitle, bytes, clock, duration, el, percent, toast } from './format.js';
import { LiveStream } from './live.js';
import { draw, sparkline } from './sparkline.js';

const LOG_LINES = 200;
const LOG_KEEP = 1000;
const TIMELINE_KEEP = 200;

const path = (name, rest = '') => `/api/workspaces/${encodeURIComponent(name)}${rest}`;

function card(title, ...children) {
  const heading = el('h2', {}, title);
  return el('section', { class: 'card' }, heading, ...children);
}

function badgeOf(w) {
  const b = badge(w);
  return el('span', { class: `badge ${b.tone}`, title: badgeTitle(w) }, el('span', { class: 'badge-dot' }), el('span', { class: 'badge-text' }, b.label));
}

/** Text of a fetched file: pretty JSON when it parses, else as is. */
function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

export class Detail {
  constructor(root, store, act, name) {
    this.root = root;
    this.store = store;
    this.act = act;
    this.name = name;
    this.frame = 0;
    this.closed = false;
    this.pendingLines = [];
    this.build();
    this.unsubscribe = store.subscribe((kind, which) => this.onChange(kind, which));
    this.ticker = setInterval(() => this.renderFacts(), 1000);
    this.logs = new LiveStream(path(name, `/logs?lines=${LOG_LINES}&follow=true`), {
      replay: false,
      onOpen: () => {
        // A reconnect sends the backlog again: start over.
        this.pendingLines = [];
        this.logBox.replaceChildren();
      },
      onEvent: (event) => this.onLogLine(event),
      onState: (state) => {
        this.logState.textContent = state === 'live' ? 'following' : state;
        this.logState.className = `pill ${state}`;
      },
    });
    this.logs.start();
    // The timeline: every event of this workspace the daemon still holds
    // (Last-Event-ID 0 replays its ring), then the live ones.
    this.events = [];
    this.eventStream = new LiveStream(path(name, '/events'), {
      onEvent: (event) => this.onStatusEvent(event),
      lastEventId: 0,
    });
    this.eventStream.start();
    this.renderAll();
    this.loadErrors();
    this.loadConfig();
    store.seed(name);
  }

  /** Stops following the log (the page is going into the back/forward cache). */
  pause() {
    this.logs.stop();
    this.eventStream.stop();
  }

  resume() {
    this.logs.start();
    this.eventStream.start();
  }

  close() {
    this.closed = true;
    this.logs.stop();
    this.eventStream.stop();
    this.unsubscribe();
    clearInterval(this.ticker);
    cancelAnimationFrame(this.frame);
    this.root.replaceChildren();
  }

  build() {
    const name = this.name;
    this.title = el('h1', { tabindex: '-1' }, name);
    this.headBadge = el('span');
    this.actions = el(
      'div',
      { class: 'actions' },
      ...['start', 'stop', 'restart'].map((action) =>
        el('button', { type: 'button', 'data-action': action, onclick: (e) => this.act(name, action, e.currentTarget) }, action[0].toUpperCase() + action.slice(1)),
      ),
    );
    this.facts = el('dl', { class: 'facts' });
    this.rssValue = el('span', { class: 'num' });
    this.cpuValue = el('span', { class: 'num' });
    this.rssChart = sparkline(480, 48, `RSS of ${name} over the last minutes`);
    this.cpuChart = sparkline(480, 48, `CPU of ${name} over the last minutes`);
    for (const chart of [this.rssChart, this.cpuChart]) {
      chart.classList.add('chart');
      chart.setAttribute('preserveAspectRatio', 'none');
    }
    this.logBox = el('div', { class: 'log', role: 'log', tabindex: '0', 'aria-label': `Output of ${name}` });
    this.logState = el('span', { class: 'pill' }, 'connecting');
    this.follow = el('input', { type: 'checkbox', id: 'follow', checked: true });
    this.follow.addEventListener('change', () => {
      if (this.follow.checked) this.logBox.scrollTop = this.logBox.scrollHeight;
    });
    this.timeline = el('ol', { class: 'timeline', id: 'timeline' });
    this.errors = el('div', { class: 'errors', id: 'errors' }, el('p', { class: 'muted' }, 'Loading…'));
    this.sessions = el('div', { id: 'sessions' }, el('p', { class: 'muted' }, 'Loading…'));
    this.config = el('div', { id: 'config' }, el('p', { class: 'muted' }, 'Loading…'));
    this.root.append(
      el('div', { class: 'detail-head' }, el('a', { href: '#/', class: 'back' }, '← Workspaces'), this.title, this.headBadge, this.actions),
      el(
        'div',
        { class: 'cols' },
        card('Status', this.facts),
        el(
          'div',
          { class: 'stack' },
          card(
            'Resources',
            el('div', { class: 'chart-row' }, el('span', { class: 'chart-label' }, 'RSS ', this.rssValue), this.rssChart),
            el('div', { class: 'chart-row' }, el('span', { class: 'chart-label' }, 'CPU ', this.cpuValue), this.cpuChart),
          ),
          card('MCP sessions', this.sessions),
        ),
      ),
      el(
        'section',
        { class: 'card', id: 'logs' },
        el('div', { class: 'card-head' }, el('h2', {}, 'Log'), this.logState, el('label', { class: 'follow' }, this.follow, ' follow')),
        this.logBox,
      ),
      el('div', { class: 'cols' }, card('Events', this.timeline), card('Last errors', this.errors)),
      card('Config', this.config),
    );
  }

  onChange(kind, which) {
    if (kind === 'connections') this.renderSessions();
    if (which !== this.name && kind !== 'structure') return;
    if (kind === 'workspace' || kind === 'structure') {
      const w = this.store.get(this.name);
      if (w && this.lastStatus !== undefined && (w.status !== this.lastStatus || w.restartCount !== this.lastRestarts)) {
        this.loadErrors();
      }
      if (w && this.configVersion !== undefined && w.configVersion !== this.configVersion) this.loadConfig();
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => this.renderAll());
  }

  renderAll() {
    this.frame = 0;
    if (this.closed) return;
    this.renderFacts();
    this.renderCharts();
    this.renderTimeline();
    this.renderSessions();
    this.flushLog();
  }

  renderFacts() {
    const w = this.store.get(this.name);
    if (!w) {
      this.facts.replaceChildren(el('dt', {}, 'status'), el('dd', {}, 'This workspace does not exist (any more).'));
      return;
    }
    this.lastStatus = w.status;
    this.lastRestarts = w.restartCount;
    this.headBadge.replaceChildren(badgeOf(w));
    const active = w.status === 'running' || w.status === 'starting';
    this.actions.querySelector('[data-action=start]').disabled = active;
    this.actions.querySelector('[data-action=stop]').disabled = w.status === 'stopped';
    const uptime = this.store.uptime(w);
    const b = w.breaker ?? {};
    const retry = b.nextRetryAt ? Date.parse(b.nextRetryAt) - Date.now() : null;
    const rows = [
      ['status', `${w.status}${w.status === 'running' ? ` (${w.health})` : ''}`],
      ['reason', w.reason ? `${w.reason}${w.changedAt ? ` · ${ago(w.changedAt)}` : ''}` : ''],
      ['enabled', w.enabled === false ? 'no (starts only when asked)' : 'yes'],
      ['pid', w.pid ?? '—'],
      ['port', w.port ?? '—'],
      ['transport', w.transport ?? ''],
      ['upstream', w.upstream ?? '—'],
      ['proxy', w.proxy ? `${w.proxy.mcp}  ·  ${w.proxy.sse}` : ''],
      ['uptime', uptime == null ? '—' : duration(uptime)],
      ['started', w.startedAt ? `${clock(w.startedAt)} (${ago(w.startedAt)})` : '—'],
      ['last probe', w.lastHealthCheck ? ago(w.lastHealthCheck) : '—'],
      ['restarts', w.restartCount ?? 0],
      [
        'breaker',
        `${b.state ?? 'closed'}${b.failureCount ? ` · ${b.failureCount} failures` : ''}${
          retry != null ? (retry > 0 ? ` · retry in ${duration(retry + 999)}` : ' · retrying') : ''
        }`,
      ],
      ['config', w.configVersion ? `${w.configVersion.slice(0, 23)}…` : '—'],
    ];
    if (w.configError) rows.push(['config error', w.configError.message ?? JSON.stringify(w.configError)]);
    if (w.lastError) rows.push(['last error', `${w.lastError.message} · ${ago(w.lastError.at)}`]);
    const shown = rows.filter(([, v]) => v !== '' && v != null);
    const text = JSON.stringify(shown);
    if (text === this.factsText) return;
    this.factsText = text;
    this.facts.replaceChildren(...shown.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, String(v))]));
  }

  renderCharts() {
    const w = this.store.get(this.name);
    if (!w) return;
    this.rssValue.textContent = w.resources ? bytes(w.resources.rssBytes) : '—';
    this.cpuValue.textContent = w.resources ? percent(w.resources.cpuPercent) : '—';
    draw(this.rssChart, w.history.map((p) => ({ t: p.t, v: p.rss })), { floor: 1 << 20 });
    draw(this.cpuChart, w.history.map((p) => ({ t: p.t, v: p.cpu })), { floor: 1 });
  }

  onStatusEvent(event) {
    let p;
    try {
      p = JSON.parse(event.data).params;
    } catch {
      return;
    }
    // A snapshot says where things stand, not what happened: keep it only as the first entry.
    const fresh = p.reason === 'snapshot' || p.reason === 'resync';
    if (fresh && this.events.length) return;
    this.events.push(p);
    if (this.events.length > TIMELINE_KEEP) this.events.shift();
    if (!this.frame) this.frame = requestAnimationFrame(() => this.renderAll());
  }

  renderTimeline() {
    const events = this.events.slice().reverse();
    const key = events.length ? `${events.length}:${events[0].seq}` : '';
    if (key === this.timelineKey) return;
    this.timelineKey = key;
    if (!events.length) {
      this.timeline.replaceChildren(el('li', { class: 'muted' }, 'No events yet.'));
      return;
    }
    this.timeline.replaceChildren(
      ...events.map((e) =>
        el(
          'li',
          { 'data-status': e.status, 'data-seq': e.seq },
          el('time', { datetime: e.timestamp }, clock(e.timestamp)),
          el('span', { class: 'transition' }, e.previous ? `${e.previous} → ` : '', el('b', { class: `t-${badge(e).tone}` }, e.status)),
          el('span', { class: 'why' }, e.reason),
          el('span', { class: 'muted' }, [e.pid ? `pid ${e.pid}` : '', `restarts ${e.restartCount}`, e.breaker !== 'closed' ? `breaker ${e.breaker}` : ''].filter(Boolean).join(' · ')),
        ),
      ),
    );
  }

  onLogLine(event) {
    try {
      this.pendingLines.push(JSON.parse(event.data));
    } catch {
      return;
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => this.renderAll());
  }

  flushLog() {
    if (!this.pendingLines.length) return;
    const box = this.logBox;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    const fragment = document.createDocumentFragment();
    for (const line of this.pendingLines.splice(0)) {
      fragment.append(
        el('div', { class: `line ${line.stream}` }, el('time', { datetime: line.ts }, clock(line.ts)), el('span', { class: 'stream' }, line.stream), el('span', { class: 'text' }, line.line)),
      );
    }
    box.append(fragment);
    while (box.childElementCount > LOG_KEEP) box.firstElementChild.remove();
    if (this.follow.checked && (atBottom || box.childElementCount <= LOG_LINES)) box.scrollTop = box.scrollHeight;
  }

  /** The last errors with their stderr tails, from the `errors` debug component. */
  async loadErrors() {
    this.store.jobs.want(`e:${this.name}`, async () => {
      const all = await getJson('/api/debug/state/errors');
      if (this.closed) return;
      const mine = all.workspaces?.[this.name];
      const errors = (mine?.errors ?? []).slice().reverse();
      const parts = [];
      if (mine?.configError) parts.push(el('div', { class: 'error-item' }, el('b', {}, 'config error '), mine.configError.message ?? JSON.stringify(mine.configError)));
      if (!errors.length) parts.push(el('p', { class: 'muted' }, 'No errors recorded.'));
      for (const e of errors) {
        const how = [e.reason, e.exitCode != null ? `exit code ${e.exitCode}` : '', e.signal ? `signal ${e.signal}` : ''].filter(Boolean).join(' · ');
        parts.push(
          el(
            'details',
            { class: 'error-item', open: parts.length < 2 },
            el('summary', {}, el('time', { datetime: e.at }, clock(e.at)), ' ', el('b', {}, e.message), how ? el('span', { class: 'muted' }, ` (${how})`) : null),
            e.stderrTail?.length ? el('pre', { class: 'stderr' }, e.stderrTail.join('\n')) : el('p', { class: 'muted' }, 'No stderr captured.'),
          ),
        );
      }
      this.errors.replaceChildren(...parts);
    });
  }

  renderSessions() {
    const c = this.store.connections;
    if (!c) return;
    const sessions = (c.proxySessions ?? []).filter((s) => s.workspace === this.name);
    const streams = (c.proxyStreams ?? []).filter((s) => s.workspace === this.name && !s.sessionId);
    const key = JSON.stringify([sessions, streams]);
    if (key === this.sessionsKey) return;
    this.sessionsKey = key;
    if (!sessions.length && !streams.length) {
      this.sessions.replaceChildren(el('p', { class: 'muted' }, 'No MCP client is connected through mcpvisor.'));
      return;
    }
    const pendingList = (pending) =>
      pending.length
        ? el('ul', { class: 'pending' }, ...pending.map((p) => el('li', {}, el('code', {}, p.method ?? '?'), ` id ${JSON.stringify(p.id)} · waiting ${duration(Date.now() - Date.parse(p.startedAt))}`)))
        : el('span', { class: 'muted' }, 'none');
    const rows = sessions.map((s) =>
      el('tr', {}, el('td', {}, el('code', { title: s.sessionId }, `${s.sessionId.slice(0, 8)}…`)), el('td', {}, s.transport), el('td', {}, ago(s.createdAt)), el('td', {}, ago(s.lastActivity)), el('td', { class: 'num' }, s.openStreams), el('td', {}, pendingList(s.pending ?? []))),
    );
    for (const s of streams) {
      rows.push(el('tr', {}, el('td', {}, el('span', { class: 'muted' }, `${s.kind} without session`)), el('td', {}, s.transport), el('td', {}, ago(s.startedAt)), el('td', {}, ''), el('td', { class: 'num' }, 1), el('td', {}, pendingList(s.pending ?? []))));
    }
    this.sessions.replaceChildren(
      el(
        'table',
        { class: 'small' },
        el('thead', {}, el('tr', {}, ...['session', 'transport', 'created', 'last activity', 'streams', 'pending requests'].map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, ...rows),
      ),
    );
  }

  /** The stored config, when the daemon has the config API (`GET .../config`); else its version only. */
  async loadConfig() {
    const w = this.store.get(this.name);
    this.configVersion = w?.configVersion ?? null;
    const response = await request(path(this.name, '/config'), { accept: 'application/json' }).catch(() => null);
    if (this.closed) return;
    if (!response || response.status !== 200) {
      this.config.replaceChildren(
        el('dl', { class: 'facts' }, el('dt', {}, 'version'), el('dd', {}, w?.configVersion ?? '—')),
        el('p', { class: 'muted', id: 'config-unavailable' }, 'The config API is not available on this daemon, so the stored file cannot be shown here.'),
      );
      return;
    }
    const text = await response.text();
    const parts = [
      el('dl', { class: 'facts' }, el('dt', {}, 'version'), el('dd', {}, response.headers.get('ETag')?.replaceAll('"', '') ?? w?.configVersion ?? '')),
      el('pre', { class: 'config', id: 'config-text' }, pretty(text)),
    ];
    const history = await request(path(this.name, '/history')).catch(() => null);
    if (history?.status === 200) parts.push(this.historyView((await history.json()).history ?? []));
    if (!this.closed) this.config.replaceChildren(...parts);
  }

  /** Revisions newest first, a diff between any two, and a rollback per applied revision. */
  historyView(revisions) {
    const box = el('div', { class: 'history' }, el('h3', {}, 'History'));
    if (!revisions.length) {
      box.append(el('p', { class: 'muted' }, 'No revisions yet.'));
      return box;
    }
    const option = (r) => el('option', { value: r.rev }, `${r.rev} · ${clock(r.at)} · ${r.source} · ${r.result}`);
    const from = el('select', { 'aria-label': 'Compare from revision' }, ...revisions.map(option));
    const to = el('select', { 'aria-label': 'Compare to revision' }, ...revisions.map(option));
    if (revisions.length > 1) from.value = String(revisions[1].rev);
    const output = el('pre', { class: 'diff', 'aria-live': 'polite' });
    const show = async () => {
      const [a, b] = await Promise.all([from.value, to.value].map((rev) => request(path(this.name, `/history/${encodeURIComponent(rev)}`)).then((r) => r.text())));
      const lines = diffLines(pretty(a), pretty(b));
      if (!lines) {
        output.replaceChildren('These revisions are too large to compare here.');
        return;
      }
      output.replaceChildren(...lines.map((l) => el('span', { class: `d${l.op === ' ' ? 'same' : l.op === '+' ? 'add' : 'del'}` }, `${l.op} ${l.text}\n`)));
    };
    const list = el(
      'table',
      { class: 'small' },
      el('thead', {}, el('tr', {}, ...['rev', 'at', 'source', 'result', 'version', ''].map((h) => el('th', { scope: 'col' }, h)))),
      el(
        'tbody',
        {},
        ...revisions.map((r, i) =>
          el(
            'tr',
            {},
            el('td', { class: 'num' }, r.rev),
            el('td', {}, clock(r.at)),
            el('td', {}, r.source),
            el('td', {}, r.result),
            el('td', {}, el('code', {}, String(r.configVersion ?? '').slice(0, 19))),
            el('td', {}, i > 0 && r.result === 'applied' ? el('button', { type: 'button', onclick: (e) => this.rollback(r.rev, e.currentTarget) }, 'Roll back to this') : ''),
          ),
        ),
      ),
    );
    box.append(list, el('div', { class: 'diff-controls' }, from, ' → ', to, el('button', { type: 'button', onclick: show }, 'Show diff')), output);
    return box;
  }

  async rollback(rev, button) {
    if (!window.confirm(`Roll ${this.name} back to revision ${rev}?`)) return;
    button.disabled = true;
    try {
      const response = await request(path(this.name, '/rollback'), { method: 'POST', body: { to: rev } });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new HttpError(response.status, body);
    } catch (error) {
      toast(`Rollback of ${this.name} failed: ${error.message}`, 'error');
    } finally {
      button.disabled = false;
      this.loadConfig();
    }
  }
}
