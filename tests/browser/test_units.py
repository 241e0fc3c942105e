"""The page's pure logic, run in the browser as it ships: badge colours, the
event-stream parser, coalesced fetches and the config diff."""

from __future__ import annotations

import pytest

from harness import Daemon


@pytest.fixture(scope="module")
def empty_daemon():
    daemon = Daemon({})
    try:
        yield daemon
    finally:
        daemon.close()


def run_module(page, script: str):
    """Runs `script` (an async function body with the page's modules in scope) and returns its result."""
    return page.driver.execute_async_script(
        f"""
        const done = arguments[arguments.length - 1];
        (async () => {{
          const {{ badge, group }} = await import('/ui/format.js');
          const {{ EventParser }} = await import('/ui/api.js');
          const {{ Jobs }} = await import('/ui/store.js');
          const {{ diffLines }} = await import('/ui/diff.js');
          {script}
        }})().then(done, (e) => done('error: ' + e));
        """
    )


def test_badge_colours(page, empty_daemon):
    page.open(empty_daemon)
    tones = run_module(
        page,
        """
        const cases = [
          ['running', 'healthy'], ['running', 'degraded'], ['running', 'unhealthy'], ['error', 'unknown'],
          ['starting', 'unknown'], ['stopping', 'healthy'], ['stopped', 'unknown'], ['unknown', 'unknown'],
        ];
        return cases.map(([status, health]) => [status, health, badge({status, health}).tone, group({status, health})]);
        """,
    )
    assert tones == [
        ["running", "healthy", "green", "running"],
        ["running", "degraded", "yellow", "degraded"],
        ["running", "unhealthy", "yellow", "degraded"],
        ["error", "unknown", "red", "error"],
        ["starting", "unknown", "blue", "transition"],
        ["stopping", "healthy", "blue", "transition"],
        ["stopped", "unknown", "grey", "stopped"],
        ["unknown", "unknown", "grey", "stopped"],
    ]


def test_a_workspace_stopped_until_its_next_request_says_so(page, empty_daemon):
    page.open(empty_daemon)
    labels = run_module(
        page,
        """
        const reasons = ['on-demand', 'idle', 'stop', undefined];
        return reasons.map((reason) => [badge({status: 'stopped', reason}).label, group({status: 'stopped', reason})]);
        """,
    )
    assert labels == [["on demand", "stopped"], ["idle", "stopped"], ["stopped", "stopped"], ["stopped", "stopped"]]


def test_event_parser_handles_any_chunking(page, empty_daemon):
    page.open(empty_daemon)
    events = run_module(
        page,
        """
        const text = ': keep-alive\\r\\n\\r\\nid: 1\\r\\ndata: {"a":1}\\r\\n\\r\\nid: 2\\ndata: x\\ndata:y\\n\\n:c\\n\\ndata: no id\\r\\r';
        const results = [];
        for (const size of [1, 2, 3, 7, text.length]) {
          const got = [];
          const parser = new EventParser((e) => got.push(e));
          for (let i = 0; i < text.length; i += size) parser.push(text.slice(i, i + size));
          results.push(JSON.stringify(got));
        }
        return results;
        """,
    )
    expected = '[{"id":"1","data":"{\\"a\\":1}"},{"id":"2","data":"x\\ny"},{"id":"2","data":"no id"}]'
    assert events == [expected] * 5


def test_jobs_run_one_fetch_per_key_and_one_more_for_requests_during_it(page, empty_daemon):
    page.open(empty_daemon)
    log = run_module(
        page,
        """
        const jobs = new Jobs(2);
        const log = [];
        const gates = {};
        const job = (key, n) => () => new Promise((resolve) => { log.push(`start ${key}${n}`); gates[key + n] = resolve; });
        jobs.want('a', job('a', 1));
        jobs.want('a', job('a', 2));   // a1 runs: queued once more
        jobs.want('a', job('a', 3));   // replaces a2
        jobs.want('b', job('b', 1));
        jobs.want('c', job('c', 1));   // waits for a free slot (limit 2)
        await new Promise((r) => setTimeout(r, 0));
        gates.a1(); await new Promise((r) => setTimeout(r, 0));
        gates.b1(); await new Promise((r) => setTimeout(r, 0));
        return log;
        """,
    )
    assert log == ["start a1", "start b1", "start c1", "start a3"]


def test_config_diff(page, empty_daemon):
    page.open(empty_daemon)
    diff = run_module(
        page,
        """
        return diffLines('a\\nb\\nc\\nd', 'a\\nc\\nd\\ne').map((l) => l.op + l.text);
        """,
    )
    assert diff == [" a", "-b", " c", " d", "+e"]
