"""With `serve --token`: the page loads without it, asks for it once, keeps
it for the tab, and then everything works with it."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from harness import DEMO, Daemon, wait_until

TOKEN = "s3cret-token"


@pytest.fixture
def guarded():
    daemon = Daemon({"alpha": DEMO, "beta": {**DEMO, "enabled": False}}, token=TOKEN)
    try:
        daemon.wait_status("alpha", "running")
        yield daemon
    finally:
        daemon.close()


def dialog_open(page) -> bool:
    return page.js("return document.getElementById('token-dialog').open")


def enter_token(page, token: str):
    box = page.find("#token-input")
    box.send_keys(token, Keys.ENTER)


def test_without_the_token_the_page_asks_for_it_and_with_it_everything_works(guarded, page):
    assert guarded.request("/api/workspaces", token=None)[0] == 401, "the API wants the token"
    page.open(guarded, ready=False)
    wait_until("the page asks for the token", 10, lambda: dialog_open(page))
    assert page.tones() == {}, "no data without the token"
    assert not page.find("#token-error").is_displayed()

    enter_token(page, "wrong")
    wait_until("a wrong token is refused", 10, lambda: dialog_open(page) and page.find("#token-error").is_displayed())

    enter_token(page, TOKEN)
    page.wait_ready()
    assert not dialog_open(page)
    wait_until("rows with badges", 10, lambda: page.tones() == {"alpha": "green", "beta": "grey"})
    wait_until("the stream is live", 10, lambda: page.find("#conn").get_attribute("data-state") == "live")

    # Commands, the status stream, the log tail and the debug components all carry the token.
    before = guarded.status("alpha")
    page.row("alpha").find_element(By.CSS_SELECTOR, "button[data-action='restart']").click()
    wait_until("the restart went through", 20, lambda: guarded.status("alpha")["restartCount"] == before["restartCount"] + 1)
    wait_until("and the row followed it", 20, lambda: page.row("alpha").find_element(By.CSS_SELECTOR, ".c-restarts").text == "1")
    page.detail("alpha")
    wait_until("log lines", 10, lambda: page.all("#logs .line"))
    wait_until("the timeline", 10, lambda: [s for _, s in page.timeline()][-1:] == ["running"])
    wait_until("errors loaded", 10, lambda: "Loading" not in page.find("#errors").text)

    # A link to /metrics cannot carry the header: the page fetches it with the token and opens the text.
    page.find("nav a[data-nav='daemon']").click()
    main = page.driver.current_window_handle
    page.find("#view-daemon .links a[href='/metrics']").click()
    tab = wait_until("a new tab", 10, lambda: [h for h in page.driver.window_handles if h != main])[0]
    page.driver.switch_to.window(tab)
    wait_until("the metrics in it", 10, lambda: "mcpvisor_events_published_total" in page.find("body").text)
    page.driver.close()
    page.driver.switch_to.window(main)

    # Kept for the tab: a reload does not ask again.
    page.find("nav a[data-nav='overview']").click()
    page.driver.refresh()
    page.wait_ready()
    assert not dialog_open(page)
    wait_until("rows after a reload", 10, lambda: page.tones() == {"alpha": "green", "beta": "grey"})
