// What the page knows about the daemon, kept current incrementally.
//
// The list is read once (`GET /api/workspaces`); after that each
// `workspace/statusChanged` notification updates its workspace at once with
// what it carries (status, health, pid, port, restarts, breaker), and the
// rest (uptime, next retry, last error, config version) comes from
// `GET /api/workspaces/{name}` for that one workspace. Those fetches are
// coalesced: at most one per workspace in flight, and any number of events
// during it cause exactly one more. Resource use and sessions, which no
// notification carries, are polled from the debug components every few
// seconds while the tab is visible.

import { getJson, HttpError } from './api.js';

const HISTORY_MAX = 180;
const FETCHES_IN_FLIGHT = 4;
const RESOURCES_EVERY_MS = 2000;
const CONNECTIONS_EVERY_MS = 3000;

/** Runs keyed jobs, at most `limit` at once and one per key; a key wanted while it runs runs once more after. */
export class Jobs {
  constructor(limit) {
    this.limit = limit;
    this.queue = new Map();
    this.running = new Set();
    this.again = new Map();
  }

  want(key, job) {
    if (this.running.has(key)) {
      this.again.set(key, job);
      return;
    }
    this.queue.set(key, job);
    this.pump();
  }

  pump() {
    while (this.running.size < this.limit && this.queue.size) {
      const [key, job] = this.queue.entries().next().value;
      this.queue.delete(key);
      this.running.add(key);
      Promise.resolve()
        .then(job)
        .catch(() => {})
        .finally(() => {
          this.running.delete(key);
          const next = this.again.get(key);
          if (next) {
            this.again.delete(key);
            this.queue.set(key, next);
          }
          this.pump();
        });
    }
  }

  clear() {
    this.queue.clear();
    this.again.clear();
  }
}

const path = (name, rest = '') => `/api/workspaces/${encodeURIComponent(name)}${rest}`;

/** The fields a notification carries; a fetch older than the newest event must not undo them. */
const NOTIFIED = ['status', 'health', 'pid', 'port', 'restartCount'];

function blank(name) {
  return {
    workspace: name,
    status: 'unknown',
    health: 'unknown',
    breaker: { state: 'closed', failureCount: 0, nextRetryAt: null },
    history: [],
    seeded: false,
    sessions: 0,
    eventSeq: 0,
  };
}

export class Store {
  constructor() {
    this.workspaces = new Map();
    this.listeners = new Set();
    this.jobs = new Jobs(FETCHES_IN_FLIGHT);
    this.loaded = false;
    this.early = [];
    this.resources = null;
    this.connections = null;
    this.stats = { eventsApplied: 0, lastSeq: 0, workspaceFetches: 0, listLoads: 0 };
    this.polling = false;
  }

  /** `listener(kind, name)`: kind `structure` (rows added or removed), `workspace`, `resources`, `connections`. */
  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(kind, name) {
    for (const listener of this.listeners) listener(kind, name);
  }

  get(name) {
    return this.workspaces.get(name);
  }

  /** Every workspace, sorted by name. */
  list() {
    return [...this.workspaces.values()];
  }

  /** Reads every workspace once; keeps what the page gathered (resource history) of those that remain. */
  async loadAll() {
    const { workspaces } = await getJson('/api/workspaces');
    this.stats.listLoads += 1;
    const next = new Map();
    for (const status of workspaces) {
      const w = this.workspaces.get(status.workspace) ?? blank(status.workspace);
      this.merge(w, status, Infinity);
      next.set(w.workspace, w);
    }
    this.workspaces = next;
    const early = this.early;
    this.early = [];
    this.loaded = true;
    this.emit('structure');
    for (const params of early) this.apply(params);
  }

  /** One SSE event of `/api/events`. */
  onEvent(event) {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    const params = message?.params;
    if (!params?.workspace) return;
    if (!this.loaded) this.early.push(params);
    else this.apply(params);
  }

  apply(p) {
    this.stats.eventsApplied += 1;
    this.stats.lastSeq = p.seq;
    const fresh = p.reason === 'snapshot' || p.reason === 'resync';
    if (p.reason === 'resync') this.scheduleReload();
    if (p.reason === 'removed') {
      if (this.workspaces.delete(p.workspace)) this.emit('structure');
      return;
    }
    let w = this.workspaces.get(p.workspace);
    const added = !w;
    if (added) {
      w = blank(p.workspace);
      this.workspaces = new Map([...this.workspaces, [w.workspace, w]].sort((a, b) => (a[0] < b[0] ? -1 : 1)));
    }
    const changed =
      added ||
      w.status !== p.status ||
      w.health !== p.health ||
      w.pid !== p.pid ||
      w.port !== p.port ||
      w.restartCount !== p.restartCount ||
      w.breaker.state !== p.breaker;
    if (w.status !== p.status) {
      if (p.status === 'running') {
        w.uptimeMs = Math.max(0, Date.now() - Date.parse(p.timestamp));
        w.fetchedAt = performance.now();
      } else {
        w.uptimeMs = null;
      }
    }
    // A crash can be repaired faster than one frame: remember the failure
    // until a row has shown it, so a red badge is never coalesced away.
    if (p.status === 'error' && !fresh) w.failures = (w.failures ?? 0) + 1;
    for (const key of NOTIFIED) w[key] = p[key];
    if (w.breaker.state !== p.breaker) w.breaker = { ...w.breaker, state: p.breaker, nextRetryAt: null };
    if (!fresh) {
      // A snapshot says what is, not why or since when.
      w.reason = p.reason;
      w.changedAt = p.timestamp;
      w.eventSeq = p.seq;
    }
    // A snapshot that matches what the list said needs no fetch.
    if (!fresh || changed) this.refresh(w.workspace);
    this.emit(added ? 'structure' : 'workspace', w.workspace);
  }

  /** Fetches one workspace's status, coalesced with other requests for it. */
  refresh(name) {
    this.jobs.want(`w:${name}`, async () => {
      const seqAtStart = this.stats.lastSeq;
      this.stats.workspaceFetches += 1;
      let status;
      try {
        status = await getJson(path(name));
      } catch (error) {
        if (error instanceof HttpError && error.status === 404 && this.workspaces.delete(name)) this.emit('structure');
        throw error;
      }
      const w = this.workspaces.get(name);
      if (!w) return;
      this.merge(w, status, seqAtStart);
      this.emit('workspace', name);
    });
  }

  /** Takes a fetched status into `w`, except the notified fields when an event newer than the fetch has set them. */
  merge(w, status, seqAtStart) {
    const keep = w.eventSeq > seqAtStart ? Object.fromEntries(NOTIFIED.map((k) => [k, w[k]])) : null;
    const breaker = keep && w.breaker.state !== status.breaker.state ? w.breaker : null;
    Object.assign(w, status);
    if (keep) Object.assign(w, keep);
    if (breaker) w.breaker = breaker;
    w.fetchedAt = performance.now();
  }

  /** Reads the whole list again soon, once however often it is asked (a resync, a reconnect). */
  scheduleReload() {
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(() => this.loadAll().catch(() => {}), 300);
  }

  /** Uptime in ms as of now, ticking between fetches. */
  uptime(w) {
    if (w.status !== 'running' || w.uptimeMs == null) return null;
    return w.uptimeMs + (performance.now() - (w.fetchedAt ?? performance.now()));
  }

  /** Loads the server's resource history of `name` once (for its sparklines). */
  seed(name) {
    const w = this.workspaces.get(name);
    if (!w || w.seeded) return;
    w.seeded = true;
    this.jobs.want(`h:${name}`, async () => {
      const { samples } = await getJson(path(name, '/resources'));
      const points = samples.map((s) => ({ t: Date.parse(s.at), rss: s.rssBytes, cpu: s.cpuPercent }));
      const last = points.length ? points[points.length - 1].t : -Infinity;
      w.history = points.concat(w.history.filter((p) => p.t > last)).slice(-HISTORY_MAX);
      this.emit('resources', name);
    });
  }

  /** Starts polling resources and connections while the tab is visible. */
  startPolling() {
    if (this.polling) return;
    this.polling = true;
    const loop = async (job, every) => {
      while (this.polling) {
        if (document.visibilityState === 'visible' && this.loaded) await job().catch(() => {});
        await new Promise((resolve) => setTimeout(resolve, every));
      }
    };
    loop(() => this.pollResources(), RESOURCES_EVERY_MS);
    loop(() => this.pollConnections(), CONNECTIONS_EVERY_MS);
  }

  stopPolling() {
    this.polling = false;
  }

  async pollResources() {
    const r = await getJson('/api/debug/state/resources');
    if (this.resources && r.sampledAt === this.resources.sampledAt) return;
    this.resources = r;
    const t = Date.parse(r.sampledAt);
    for (const w of this.workspaces.values()) {
      const usage = r.children[w.workspace];
      if (!usage && !w.resources) continue;
      w.resources = usage ?? null;
      if (usage && !Number.isNaN(t)) {
        const last = w.history[w.history.length - 1];
        if (!last || t > last.t) {
          w.history.push({ t, rss: usage.rssBytes, cpu: usage.cpuPercent });
          if (w.history.length > HISTORY_MAX) w.history.shift();
        }
      }
      this.emit('resources', w.workspace);
    }
    this.emit('resources', null);
  }

  async pollConnections() {
    const c = await getJson('/api/debug/state/connections');
    this.connections = c;
    const counts = new Map();
    for (const s of c.proxySessions ?? []) counts.set(s.workspace, (counts.get(s.workspace) ?? 0) + 1);
    for (const w of this.workspaces.values()) {
      const n = counts.get(w.workspace) ?? 0;
      if (w.sessions !== n) {
        w.sessions = n;
        this.emit('workspace', w.workspace);
      }
    }
    this.emit('connections', null);
  }

  /** Workspaces per filter group (see format.group). */
  counts(groupOf) {
    const out = { running: 0, degraded: 0, error: 0, transition: 0, stopped: 0 };
    for (const w of this.workspaces.values()) out[groupOf(w)] += 1;
    return out;
  }
}
