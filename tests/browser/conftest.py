"""Fixtures of the browser tests: one headless Chromium for the session, a
page helper per test, and the measurements the run reports at its end."""

from __future__ import annotations

import json
import urllib.parse

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from harness import Daemon, color_scheme, start_browser, wait_until

# Lines the run prints at its end (the first render with 1,000 workspaces).
REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter):
    for line in REPORT:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def browser():
    driver = start_browser()
    yield driver
    driver.quit()


class Page:
    """The dashboard of one daemon in the browser, read the way a person looks at it."""

    def __init__(self, driver):
        self.driver = driver
        self.daemon: Daemon | None = None

    def open(self, daemon: Daemon, hash: str = "#/", ready: bool = True):
        """Loads the page of `daemon`; with `ready`, waits until its first screen is rendered."""
        self.daemon = daemon
        self.driver.get(f"{daemon.url}/{hash}")
        if ready:
            self.wait_ready()
        return self

    def wait_ready(self):
        try:
            wait_until("the page is ready", 15, lambda: self.js("return document.body.dataset.ready === 'true'"))
        except AssertionError as error:
            state = self.js("return [location.href, JSON.stringify(window.mcpvisor?.stats)]")
            raise AssertionError(f"{error}; page: {state}; console: {self.driver.get_log('browser')}") from None

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def tones(self) -> dict[str, str]:
        """Badge colour per workspace row in the document: green, yellow, red, blue or grey."""
        return self.js(
            "return Object.fromEntries([...document.querySelectorAll('tr[data-workspace]')]"
            ".map(tr => [tr.dataset.workspace, tr.querySelector('.badge').classList[1]]))"
        )

    def row(self, name: str):
        return self.find(f'tr[data-workspace="{name}"]')

    def detail(self, name: str):
        """Opens the detail view of `name` by its link, as a person would."""
        self.row(name).find_element(By.CSS_SELECTOR, "a.name").click()
        wait_until(f"detail of {name}", 10, lambda: self.find("#view-detail h1").text == name)

    def timeline(self) -> list[tuple[int, str]]:
        """(seq, status) of the detail view's event timeline, oldest first."""
        items = self.js(
            "return [...document.querySelectorAll('#timeline li[data-seq]')]"
            ".map(li => [Number(li.dataset.seq), li.dataset.status])"
        )
        return sorted((seq, status) for seq, status in items)

    def filter(self, text: str):
        box = self.find("#filter")
        # Typed as a person would, so the page sees input events (clear() sends none).
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        if text:
            box.send_keys(text)

    def forget_console(self):
        """Drops what the page logged so far (errors a test caused on purpose)."""
        self.driver.get_log("browser")

    def console_errors(self) -> list[str]:
        """Errors the page logged, but not the API's own 4xx answers (routes a daemon may lack)."""
        errors = []
        for entry in self.driver.get_log("browser"):
            message = entry["message"]
            if entry["level"] != "SEVERE" or "the server responded with a status of 4" in message:
                continue
            errors.append(message)
        return errors

    def screenshot(self, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))


@pytest.fixture
def page(browser):
    color_scheme(browser, "light")
    page = Page(browser)
    yield page
    errors = page.console_errors()
    browser.get("about:blank")
    assert not errors, f"the page logged errors: {errors}"


def hash_for(name: str) -> str:
    return "#/w/" + urllib.parse.quote(name)


def dump(value) -> str:
    return json.dumps(value, indent=1, sort_keys=True)
