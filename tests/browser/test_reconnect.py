"""When the daemon goes away the page says so, and when it is back the page
reconnects with Last-Event-ID and shows the state as it is now."""

from __future__ import annotations

from harness import DEMO, Daemon, wait_until


def test_a_lost_stream_is_shown_and_resumed_with_last_event_id(page):
    daemon = Daemon({"alpha": DEMO, "beta": {**DEMO, "enabled": False}})
    try:
        daemon.wait_status("alpha", "running")
        page.open(daemon)
        wait_until("live", 10, lambda: page.find("#conn").get_attribute("data-state") == "live")
        # Note the Last-Event-ID of every request for the stream from now on.
        page.js(
            """
            window.__resumes = [];
            const fetch = window.fetch;
            window.fetch = (url, init) => {
              if (String(url).startsWith('/api/events')) window.__resumes.push(init.headers['Last-Event-ID'] ?? null);
              return fetch(url, init);
            };
            """
        )
        seen = page.js("return mcpvisor.live.lastEventId")
        assert seen is not None

        daemon.stop()
        wait_until("the page shows it is disconnected", 10, lambda: page.find("#conn").get_attribute("data-state") == "down")
        assert "disconnected" in page.find("#conn").text

        # The daemon comes back with beta enabled: its seq starts over, so the page gets a resync.
        (daemon.workspaces / "beta.json").write_text('{"command": "${MCPVISOR}", "args": ["demo-server", "--port", "${PORT}"]}')
        daemon.start()
        daemon.wait_status("beta", "running")
        wait_until("live again", 20, lambda: page.find("#conn").get_attribute("data-state") == "live")
        assert page.js("return window.__resumes")[0] == seen, "the first reconnect sends the last id it saw"
        wait_until("the rows show the new state", 20, lambda: page.tones() == {"alpha": "green", "beta": "green"})
        page.forget_console()  # the refused connections while the daemon was down
    finally:
        daemon.close()
