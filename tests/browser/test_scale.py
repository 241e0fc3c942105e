"""1,000 workspaces: the first screen within a second, and a burst of more
than 100 notifications followed without a reload or a full refetch.

Most workspaces are `"enabled": false` (they have rows and statuses, but no
child: 1,000 children would drown this two-core machine); the burst comes
from starting, restarting and stopping sixteen of them.
"""

from __future__ import annotations

import pytest

from conftest import REPORT
from harness import DEMO, Daemon, wait_until

N_WORKSPACES = 1000
BURST = [f"burst-{i:02}" for i in range(16)]
RUNNING = [f"live-{i}" for i in range(4)]


@pytest.fixture(scope="module")
def crowd():
    files = {name: DEMO for name in RUNNING}
    files |= {name: {**DEMO, "enabled": False} for name in BURST}
    for i in range(N_WORKSPACES - len(files)):
        files[f"ws-{i:04}"] = {**DEMO, "enabled": False}
    daemon = Daemon(files, ports=64)
    try:
        # /readyz may answer before a file written in its last 200 ms is read.
        wait_until("every workspace is known", 30, lambda: len(daemon.statuses()) == N_WORKSPACES)
        for name in RUNNING:
            daemon.wait_status(name, "running", within=30)
        yield daemon
    finally:
        daemon.close()


def page_statuses(page) -> dict[str, str]:
    return page.js("return Object.fromEntries([...mcpvisor.store.workspaces].map(([n, w]) => [n, w.status]))")


def test_first_screen_of_1000_workspaces_renders_within_a_second(page, crowd):
    page.open(crowd)
    first = page.js("return mcpvisor.stats.firstRenderMs")
    REPORT.append(f"dashboard: first screen of {N_WORKSPACES} workspaces rendered {first:.0f} ms after navigation")
    assert first < 1000, f"first screen after {first:.0f} ms"
    rows = page.tones()
    assert 20 <= len(rows) < 100, f"the first screen and a margin are in the document, not every row: {len(rows)}"
    assert page.find(".chip[data-group='all'] .chip-count").text == str(N_WORKSPACES)
    assert page.find(".chip[data-group='running'] .chip-count").text == str(len(RUNNING))
    assert page.js("return mcpvisor.store.workspaces.size") == N_WORKSPACES


def test_a_burst_of_events_is_followed_incrementally(page, crowd):
    page.open(crowd)
    page.filter("burst")
    wait_until("the burst rows", 10, lambda: sorted(page.tones()) == BURST)
    page.js(
        """
        window.__longest = 0;
        new PerformanceObserver(list => {
          for (const e of list.getEntries()) window.__longest = Math.max(window.__longest, e.duration);
        }).observe({type: 'longtask'});
        """
    )
    loads = page.js("return mcpvisor.store.stats.listLoads")
    seq_before = crowd.last_seq()

    for name in BURST:
        crowd.post(f"/api/workspaces/{name}/start")
    wait_until("burst started", 60, lambda: all(crowd.statuses()[n] == "running" for n in BURST))
    for name in BURST:
        crowd.post(f"/api/workspaces/{name}/restart")
    wait_until(
        "burst restarted",
        60,
        lambda: all(w["status"] == "running" and w["restartCount"] >= 1 for w in map(crowd.status, BURST)),
    )
    for name in BURST:
        crowd.post(f"/api/workspaces/{name}/stop")
    wait_until("burst stopped", 60, lambda: all(crowd.statuses()[n] == "stopped" for n in BURST))

    seq_after = crowd.last_seq()
    n_events = seq_after - seq_before
    assert n_events >= 100, f"only {n_events} events"
    wait_until("the page saw every event", 20, lambda: page.js("return mcpvisor.store.stats.lastSeq") == seq_after)
    wait_until("every row as the daemon says", 20, lambda: page_statuses(page) == crowd.statuses())
    wait_until("the burst rows are grey again", 10, lambda: page.tones() == {n: "grey" for n in BURST})
    stats = page.js("return mcpvisor.store.stats")
    assert stats["listLoads"] == loads, "no full refetch of the list"
    assert stats["workspaceFetches"] <= n_events, "at most one fetch per event, coalesced"
    longest = page.js("return window.__longest")
    REPORT.append(
        f"dashboard: burst of {n_events} events followed with {stats['workspaceFetches']} workspace fetches; "
        f"longest task {longest:.0f} ms"
    )
