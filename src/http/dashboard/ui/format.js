// How values read on the page (sizes, durations, times, the status badge),
// and the two DOM helpers every view uses: el() and toast().

/** 71234567 -> "67.9 MiB". */
export function bytes(n) {
  if (n == null) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

/** 0.43 -> "0.4%". */
export function percent(v) {
  if (v == null) return '';
  return `${v >= 10 ? Math.round(v) : v.toFixed(1)}%`;
}

/** Milliseconds as "4s", "3m 05s", "2h 07m", "3d 04h". */
export function duration(ms) {
  if (ms == null || Number.isNaN(ms)) return '';
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d ${String(h % 24).padStart(2, '0')}h`;
}

/** An RFC 3339 time as local "HH:MM:SS.mmm". */
export function clock(at) {
  if (!at) return '';
  const d = new Date(at);
  if (Number.isNaN(d.getTime())) return at;
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** An RFC 3339 time as "5s ago", "3m ago". */
export function ago(at, now = Date.now()) {
  if (!at) return '';
  const t = Date.parse(at);
  if (Number.isNaN(t)) return at;
  return `${duration(now - t)} ago`;
}

/** Labels of a stopped workspace that a request starts again (docs/reference.md §11). */
const WAKING = { 'on-demand': 'on demand', idle: 'idle' };

/**
 * The badge of a workspace: `{tone, label}`, tone one of green (running
 * and healthy), yellow (running, not healthy), red (error), blue (starting,
 * stopping), grey (stopped, unknown). A workspace stopped until its next
 * request reads `on demand` or `idle`.
 */
export function badge(w) {
  switch (w.status) {
    case 'stopped':
      return { tone: 'grey', label: WAKING[w.reason] ?? 'stopped' };
    case 'running':
      if (w.health === 'healthy' || w.health == null) return { tone: 'green', label: 'running' };
      return { tone: 'yellow', label: w.health === 'unknown' ? 'running' : w.health };
    case 'error':
      return { tone: 'red', label: 'error' };
    case 'starting':
    case 'stopping':
      return { tone: 'blue', label: w.status };
    default:
      return { tone: 'grey', label: w.status || 'unknown' };
  }
}

/** The filter group a workspace falls in: running, degraded, error, transition, stopped. */
export function group(w) {
  return { green: 'running', yellow: 'degraded', red: 'error', blue: 'transition', grey: 'stopped' }[badge(w).tone];
}

/** The hover text of a badge: status, health, why, since when, the last error. */
export function badgeTitle(w) {
  const parts = [`${w.status}${w.health && w.status === 'running' ? ` (${w.health})` : ''}`];
  if (w.reason) parts.push(`reason: ${w.reason}${w.changedAt ? ` at ${clock(w.changedAt)}` : ''}`);
  if (w.status === 'stopped' && WAKING[w.reason]) parts.push('the next request to it starts it');
  if (w.configError) parts.push(`config error: ${w.configError.message ?? JSON.stringify(w.configError)}`);
  if (w.status === 'error' && w.lastError) parts.push(`last error: ${w.lastError.message}`);
  return parts.join('\n');
}

/** Creates an element: el('td', {class: 'x', title: 'y'}, child, 'text'). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Shows `message` for a few seconds in the corner; tone `error` or `info`. */
export function toast(message, tone = 'info') {
  const box = document.getElementById('toasts');
  if (!box) return;
  const item = el('div', { class: `toast ${tone}` }, message);
  box.append(item);
  setTimeout(() => item.remove(), tone === 'error' ? 8000 : 4000);
}
