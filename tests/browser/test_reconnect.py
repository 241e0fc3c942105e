"""When the daemon goes away the page says so, and when it is back the page
reconnects with Last-Event-ID and shows the state as it is now."""

from __future__ import annotations

from harness import DEMO, Daemon, wait_until


def restart_alpha_until(daemon: Daemon, seq: int):
    """Restarts alpha until the daemon has published at least `seq` events."""
    while daemon.last_seq() < seq:
        restarts = daemon.status("alpha")["restartCount"]
        daemon.post("/api/workspaces/alpha/restart")
        wait_until("alpha restarted", 20, lambda: (s := daemon.status("alpha"))["status"] == "running" and s["restartCount"] > restarts)


def test_a_lost_stream_is_shown_and_resumed_with_last_event_id(page):
    daemon = Daemon({"alpha": DEMO, "beta": {**DEMO, "enabled": False}})
    try:
        daemon.wait_status("alpha", "running")
        restart_alpha_until(daemon, 10)
        page.open(daemon)
        wait_until("live", 10, lambda: page.find("#conn").get_attribute("data-state") == "live")
        # Note the Last-Event-ID of every request for the stream from now on.
        page.js(
            """
            window.__resumes = [];
            window.__hold = null;
            const fetch = window.fetch;
            window.fetch = (url, init) => {
              if (!String(url).startsWith('/api/events')) return fetch(url, init);
              window.__resumes.push(init.headers['Last-Event-ID'] ?? null);
              // While held, the reconnect waits for the test to let it go.
              if (!window.__hold) return fetch(url, init);
              return new Promise((resolve) => window.__hold.push(() => resolve(fetch(url, init))));
            };
            """
        )
        seen = page.js("return mcpvisor.live.lastEventId")
        assert seen is not None

        page.js("window.__hold = []")
        daemon.stop()
        wait_until("the page shows it is disconnected", 10, lambda: page.find("#conn").get_attribute("data-state") == "down")
        assert "disconnected" in page.find("#conn").text

        # The daemon comes back with beta enabled, and counts seq from 1 again. Restarts of alpha
        # carry it past the id the page saw, so a replay from that id would skip beta's start.
        (daemon.workspaces / "beta.json").write_text('{"command": "${MCPVISOR}", "args": ["demo-server", "--port", "${PORT}"]}')
        daemon.start()
        daemon.wait_status("beta", "running")
        assert daemon.last_seq() < int(seen), "beta's start is behind the id the page saw"
        restart_alpha_until(daemon, int(seen) + 1)
        page.js("const held = window.__hold; window.__hold = null; held.forEach((go) => go())")
        wait_until("live again", 20, lambda: page.find("#conn").get_attribute("data-state") == "live")
        assert page.js("return window.__resumes")[0] == seen, "the first reconnect sends the last id it saw"
        wait_until("the rows show the new state", 20, lambda: page.tones() == {"alpha": "green", "beta": "green"})
        page.forget_console()  # the refused connections while the daemon was down
    finally:
        daemon.close()
