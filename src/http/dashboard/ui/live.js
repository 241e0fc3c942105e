// A server-sent event stream that stays connected: it reconnects with
// Last-Event-ID after any failure (250 ms, doubling to 5 s) and says whether
// it is live, so the page can show when it is disconnected.

import { readEvents, Unauthorized } from './api.js';

export class LiveStream {
  /**
   * `path`: the SSE route; `onEvent({id, data})` per event;
   * `onState(state, since)` with state `connecting | live | down | stopped`.
   * `replay`: whether a reconnect asks for the missed events with
   * Last-Event-ID (the status stream) or starts over (a log tail);
   * `lastEventId`: the one to send on the first connect (0 replays all the
   * daemon still holds).
   */
  constructor(path, { onEvent, onState = () => {}, onOpen = () => {}, replay = true, lastEventId = null }) {
    this.path = path;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onOpen = onOpen;
    this.replay = replay;
    this.lastEventId = lastEventId;
    this.state = 'stopped';
    this.controller = null;
  }

  start() {
    if (this.controller) return;
    this.controller = new AbortController();
    this.run(this.controller.signal);
  }

  stop() {
    this.controller?.abort();
    this.controller = null;
    this.set('stopped');
  }

  set(state) {
    if (this.state === state) return;
    this.state = state;
    this.since = Date.now();
    this.onState(state, this.since);
  }

  async run(signal) {
    let delay = 250;
    while (!signal.aborted) {
      if (this.state !== 'down') this.set('connecting');
      try {
        await readEvents(this.path, {
          lastEventId: this.replay ? this.lastEventId : null,
          signal,
          onOpen: () => {
            delay = 250;
            this.set('live');
            this.onOpen();
          },
          onEvent: (event) => {
            if (event.id != null) this.lastEventId = event.id;
            this.onEvent(event);
          },
        });
      } catch (error) {
        if (error instanceof Unauthorized) {
          // The token dialog restarts the stream once it has a token.
          this.controller = null;
          this.set('stopped');
          return;
        }
      }
      if (signal.aborted) return;
      this.set('down');
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
}
