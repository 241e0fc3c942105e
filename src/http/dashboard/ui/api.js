// Every request the page makes to the daemon: the tab's bearer token, JSON
// answers, and server-sent events read with fetch.
//
// EventSource cannot send an Authorization header, so SSE streams are read
// with fetch and a stream reader, parsed here by the rules of the HTML
// standard's event-stream format (id, data, comments, blank-line dispatch).

const TOKEN_KEY = 'mcpvisor.token';

/** The daemon answered 401: the page needs a (different) token. */
export class Unauthorized extends Error {}

/** A non-2xx answer, with the daemon's `{"error","code"}` when it sent one. */
export class HttpError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

let unauthorized = () => {};

/** Calls `handler` whenever any request is answered 401. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Keeps `value` for this tab; an empty value forgets it. */
export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra) {
  const out = { ...extra };
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

/** fetch with the token; throws Unauthorized on 401, returns any other answer. */
export async function request(path, { method = 'GET', body, signal, accept = 'application/json', extra = {} } = {}) {
  const init = { method, signal, headers: headers({ Accept: accept, ...extra }), cache: 'no-store' };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    unauthorized();
    throw new Unauthorized('the daemon wants a bearer token');
  }
  return response;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON: the status says enough.
  }
  return new HttpError(response.status, body);
}

/** GET `path` as JSON; throws HttpError on any other status than 2xx. */
export async function getJson(path, options) {
  const response = await request(path, options);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** POST `path` (a command); resolves to `{status, body}`, throws HttpError on 4xx/5xx. */
export async function post(path, body) {
  const response = await request(path, { method: 'POST', body });
  if (!response.ok) throw await errorOf(response);
  return { status: response.status, body: await response.json().catch(() => null) };
}

/**
 * Reads the SSE stream at `path` until it ends, calling `onEvent({id, data})`
 * per event and `onOpen()` once the answer's headers are in. `lastEventId`
 * is sent as `Last-Event-ID`. Rejects when the request fails or `signal`
 * aborts, and also after `idleMs` without a byte (keep-alives included), so
 * a silently dropped connection is noticed.
 */
export async function readEvents(path, { lastEventId, signal, onOpen, onEvent, idleMs = 45000 }) {
  const controller = new AbortController();
  const abort = () => controller.abort();
  signal?.addEventListener('abort', abort, { once: true });
  let idle = null;
  const watch = () => {
    clearTimeout(idle);
    idle = setTimeout(abort, idleMs);
  };
  try {
    watch();
    const extra = lastEventId != null ? { 'Last-Event-ID': String(lastEventId) } : {};
    const response = await request(path, { signal: controller.signal, accept: 'text/event-stream', extra });
    if (!response.ok) throw await errorOf(response);
    onOpen?.();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new EventParser(onEvent);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      watch();
      parser.push(value);
    }
  } finally {
    clearTimeout(idle);
    signal?.removeEventListener('abort', abort);
  }
}

/** The text/event-stream parser: feed it chunks, it calls `onEvent({id, data})`. */
export class EventParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.afterCR = false;
    this.data = [];
    this.id = null;
  }

  push(chunk) {
    // A \r that ended the last chunk may be the first half of a \r\n.
    const text = this.afterCR && chunk.startsWith('\n') ? chunk.slice(1) : chunk;
    this.afterCR = false;
    this.buffer += text;
    const newline = /\r\n|\r|\n/g;
    let start = 0;
    let match;
    while ((match = newline.exec(this.buffer))) {
      this.line(this.buffer.slice(start, match.index));
      start = match.index + match[0].length;
      if (match[0] === '\r' && start === this.buffer.length) this.afterCR = true;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === '') {
      if (this.data.length) this.onEvent({ id: this.id, data: this.data.join('\n') });
      this.data = [];
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.data.push(value);
    else if (field === 'id' && !value.includes('\0')) this.id = value;
  }
}
