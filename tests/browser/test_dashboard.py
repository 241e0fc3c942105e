"""The dashboard against a real daemon with real children: badges, a crash
seen live, the restart button, the log tail, errors, sessions, filters, and
the screenshots in the README."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import urllib.request
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from conftest import hash_for
from harness import DEMO, REPO, Daemon, color_scheme, viewport, wait_until

MARKER = {
    "command": "/bin/sh",
    "args": ["-c", 'echo marker-line >&2; exec "$0" demo-server --port "$PORT"', "${MCPVISOR}"],
}

SHOWCASE = {
    "notes": DEMO,
    "search": DEMO,
    "github": DEMO,
    "marker": MARKER,
    # Fails at once, twice, and the breaker opens for five minutes.
    "flaky": {
        "command": "/bin/sh",
        "args": ["-c", "echo 'flaky: cannot open /data/index.db: permission denied' >&2; exit 3"],
        "restart": {"backoffInitial": "100ms"},
        "circuitBreaker": {"failureThreshold": 2, "openFor": "5m"},
    },
    "archive": {**DEMO, "enabled": False},
    # Never listens: starting until its ten-minute startup timeout.
    "slow-start": {"command": "/bin/sh", "args": ["-c", "exec sleep 600"], "health": {"startupTimeout": "10m"}},
}

EXPECTED_TONES = {
    "notes": "green",
    "search": "green",
    "github": "green",
    "marker": "green",
    "flaky": "red",
    "archive": "grey",
    "slow-start": "blue",
}

SCREENSHOTS = REPO / "target" / "screenshots"

# How many points the RSS sparkline of a row draws.
SPARKLINE_POINTS = """
const line = document.querySelector(`tr[data-workspace="${arguments[0]}"] .spark-line`);
return line ? (line.getAttribute('d').match(/[ML]/g) || []).length : 0;
"""


def settled(daemon: Daemon):
    """Waits until every showcase workspace is where the tests expect it."""
    for name in ["notes", "search", "github", "marker"]:
        daemon.wait_status(name, "running", within=30)
    daemon.wait_status("archive", "stopped")
    daemon.wait_status("slow-start", "starting")
    wait_until("flaky's breaker is open", 30, lambda: daemon.status("flaky")["breaker"]["state"] == "open")


class McpSession:
    """An MCP client session through mcpvisor's proxy, with one slow call left pending."""

    def __init__(self, daemon: Daemon, workspace: str):
        self.url = f"{daemon.url}/workspaces/{workspace}/mcp"
        response = self.call(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "browser-test", "version": "1"},
                },
            }
        )
        self.session = response.headers["Mcp-Session-Id"]
        response.read()
        self.call({"jsonrpc": "2.0", "method": "notifications/initialized"}).read()

    def call(self, body, timeout=10):
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if getattr(self, "session", None):
            headers |= {"Mcp-Session-Id": self.session, "MCP-Protocol-Version": "2025-06-18"}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        return urllib.request.urlopen(request, timeout=timeout)

    def leave_pending(self):
        """Starts a ten-minute `sleep` tool call in the background; it is pending until the daemon stops."""

        def run():
            try:
                body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": 600000}}}
                self.call(body, timeout=900).read()
            except Exception:
                pass  # the daemon stopped under it

        threading.Thread(target=run, daemon=True).start()


@pytest.fixture(scope="module")
def showcase():
    daemon = Daemon(SHOWCASE)
    try:
        settled(daemon)
        session = McpSession(daemon, "notes")
        session.leave_pending()
        wait_until(
            "the pending call is listed",
            10,
            lambda: any(s["pending"] for s in daemon.get("/api/debug/state/connections")["proxySessions"]),
        )
        yield daemon
    finally:
        daemon.close()


def test_rows_show_every_workspace_with_its_badge(page, showcase):
    page.open(showcase)
    wait_until("every row has its badge", 10, lambda: page.tones() == EXPECTED_TONES)
    assert list(page.tones()) == sorted(SHOWCASE), "one row per workspace, sorted by name"
    flaky = page.row("flaky")
    assert "exit" in flaky.find_element(By.CSS_SELECTOR, ".badge").get_attribute("title"), "the reason on hover"
    assert flaky.find_element(By.CSS_SELECTOR, ".c-breaker").text.startswith("open · "), "breaker with countdown"
    assert page.row("archive").find_element(By.CSS_SELECTOR, ".tags").text == "disabled"
    counts = {b.get_attribute("data-group"): b.find_element(By.CSS_SELECTOR, ".chip-count").text for b in page.all(".chip")}
    assert counts == {"all": "7", "running": "4", "degraded": "0", "error": "1", "transition": "1", "stopped": "1"}
    notes = page.row("notes")
    assert notes.find_element(By.CSS_SELECTOR, ".c-port").text == str(showcase.status("notes")["port"])
    assert notes.find_element(By.CSS_SELECTOR, ".c-transport").text == "streamable-http"
    wait_until("the session is counted", 10, lambda: page.row("notes").find_element(By.CSS_SELECTOR, ".c-sessions").text == "1")
    wait_until("RSS is shown", 10, lambda: page.row("notes").find_element(By.CSS_SELECTOR, ".c-rss .v").text.endswith("B"))
    first = page.row("notes").find_element(By.CSS_SELECTOR, ".c-uptime").text
    wait_until("uptime ticks", 5, lambda: page.row("notes").find_element(By.CSS_SELECTOR, ".c-uptime").text != first)


def test_detail_shows_stderr_errors_config_and_sessions(page, showcase):
    page.open(showcase)
    page.detail("marker")
    wait_until(
        "the marker line in the log tail",
        10,
        lambda: any(
            line.find_element(By.CSS_SELECTOR, ".text").text == "marker-line" for line in page.all("#logs .line.stderr")
        ),
    )
    wait_until("the stored file and its history", 10, lambda: "applied" in page.find("#config").text)
    config = page.find("#config").text
    assert showcase.status("marker")["configVersion"] in config
    assert '"command"' in config, "the stored file, from GET /api/workspaces/{name}/config"
    assert "not available" not in config
    page.open(showcase, hash_for("flaky"))
    wait_until("flaky's stderr tail", 10, lambda: "permission denied" in page.find("#errors pre.stderr").text)
    assert "exit code 3" in page.find("#errors").text
    page.open(showcase, hash_for("notes"))
    wait_until("the pending tools/call", 10, lambda: "tools/call" in page.find("#sessions").text)


def test_kill_9_turns_the_row_red_then_green_without_a_reload(page, showcase):
    page.open(showcase)
    old = showcase.status("search")
    # Record every colour the badge takes, with the browser's clock.
    page.js(
        """
        window.__notReloaded = true;
        window.__tones = [];
        const badge = document.querySelector('tr[data-workspace="search"] .badge');
        new MutationObserver(() => window.__tones.push([badge.classList[1], performance.now()]))
          .observe(badge, {attributes: true, attributeFilter: ['class']});
        """
    )
    killed_at = page.js("return performance.now()")
    os.kill(old["pid"], signal.SIGKILL)

    def green_after_red():
        tones = page.js("return window.__tones")
        red = next((i for i, (tone, _) in enumerate(tones) if tone == "red"), None)
        if red is None:
            return None
        return next((at for tone, at in tones[red:] if tone == "green"), None)

    green_at = wait_until("search turns red, then green", 10, green_after_red)
    assert green_at - killed_at <= 2000, f"red then green took {green_at - killed_at:.0f} ms"
    assert page.js("return window.__notReloaded === true"), "the page was not reloaded"
    now = showcase.wait_status("search", "running")
    assert now["pid"] != old["pid"] and now["restartCount"] == old["restartCount"] + 1
    assert page.row("search").find_element(By.CSS_SELECTOR, ".c-restarts").text == str(now["restartCount"])


def test_restart_button_shows_stopping_starting_running_in_the_timeline(page, showcase):
    page.open(showcase, hash_for("github"))
    wait_until("the timeline", 10, lambda: page.timeline())
    before = max(seq for seq, _ in page.timeline())
    page.find("#view-detail button[data-action='restart']").click()

    def sequence():
        statuses = [status for seq, status in page.timeline() if seq > before]
        it = iter(statuses)
        return all(step in it for step in ["stopping", "starting", "running"]) and statuses

    statuses = wait_until("stopping -> starting -> running", 20, sequence)
    assert statuses[0] == "stopping", statuses
    showcase.wait_status("github", "running")


def test_filter_by_name_and_status(page, showcase):
    page.open(showcase)
    wait_until("badges", 10, lambda: page.tones() == EXPECTED_TONES)
    page.filter("ar")
    wait_until("name filter", 5, lambda: sorted(page.tones()) == ["archive", "marker", "search", "slow-start"])
    page.filter("")
    page.find(".chip[data-group='error']").click()
    wait_until("status filter", 5, lambda: list(page.tones()) == ["flaky"])
    page.find(".chip[data-group='all']").click()
    wait_until("all again", 5, lambda: len(page.tones()) == len(SHOWCASE))


def test_keyboard_opens_a_workspace_and_escape_returns(page, showcase):
    from selenium.webdriver.common.keys import Keys

    page.open(showcase)
    body = page.find("body")
    body.send_keys("/")
    assert page.js("return document.activeElement.id") == "filter"
    page.find("#filter").send_keys("notes", Keys.ENTER)
    wait_until("the notes link has focus", 5, lambda: page.js("return document.activeElement.textContent") == "notes")
    page.driver.switch_to.active_element.send_keys(Keys.ENTER)
    wait_until("detail of notes", 5, lambda: page.find("#view-detail h1").text == "notes")
    page.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_until("back on the overview, on the same row", 5, lambda: page.js("return document.activeElement.textContent") == "notes")


def test_daemon_page_shows_version_totals_and_links(page, showcase):
    page.open(showcase, "#/daemon")
    version = showcase.get("/healthz")["version"]
    wait_until("the version", 10, lambda: f"version\n{version}" in page.find("#view-daemon").text)
    text = page.find("#view-daemon").text
    assert "7 workspaces" in text
    wait_until("resource totals", 10, lambda: "processes" in page.find("#view-daemon").text)
    wait_until("the system check", 10, lambda: page.find("#validate").is_displayed())
    assert "SYSTEM CHECK" in page.find("#validate").text.upper()
    links = [a.get_attribute("href") for a in page.all("#view-daemon .links a")]
    assert f"{showcase.url}/metrics" in links
    page.find(".bar-row a[href='#/?status=error']").click()
    wait_until("the overview filtered to errors", 5, lambda: list(page.tones()) == ["flaky"])


def test_screenshots_light_and_dark(page, showcase):
    """Takes the README's screenshots; UPDATE_SCREENSHOTS=1 copies them to docs/.

    Runs last, so `search` has a crash and a restart to show; a client
    session with a call in flight is opened on it first.
    """
    if showcase.status("search")["restartCount"] == 0:  # run alone, without the kill test before it
        os.kill(showcase.status("search")["pid"], signal.SIGKILL)
        wait_until("search restarted", 20, lambda: (s := showcase.status("search"))["restartCount"] == 1 and s["status"] == "running")
    McpSession(showcase, "search").leave_pending()
    shots = []
    for scheme in ["light", "dark"]:
        color_scheme(page.driver, scheme)
        page.open(showcase)
        wait_until("badges", 10, lambda: page.tones() == EXPECTED_TONES)
        wait_until("sparklines of three samples", 20, lambda: page.js(SPARKLINE_POINTS, "notes") >= 3)
        page.js("document.activeElement.blur()")
        shots.append(SCREENSHOTS / f"dashboard-overview-{scheme}.png")
        page.screenshot(shots[-1])
        # The whole detail view, taller than the 1280x800 it is made for.
        viewport(page.driver, 1280, 1180)
        page.open(showcase, hash_for("search"))
        wait_until("log lines", 10, lambda: page.all("#logs .line"))
        wait_until("the crash in the timeline", 10, lambda: "error" in [status for _, status in page.timeline()])
        wait_until("pending request", 10, lambda: "tools/call" in page.find("#sessions").text)
        wait_until("errors loaded", 10, lambda: "Loading" not in page.find("#errors").text)
        page.js("document.activeElement.blur()")
        shots.append(SCREENSHOTS / f"dashboard-detail-{scheme}.png")
        page.screenshot(shots[-1])
        viewport(page.driver, 1280, 800)
    background = {}
    for scheme in ["light", "dark"]:
        color_scheme(page.driver, scheme)
        background[scheme] = page.js("return getComputedStyle(document.body).backgroundColor")
    assert background["light"] != background["dark"], "prefers-color-scheme switches the palette"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        for shot in shots:
            shutil.copy(shot, REPO / "docs" / shot.name)
