"""What the browser tests stand on: a real `mcpvisor serve` on a temp folder,
a headless Chromium driven over WebDriver, and deadline waits.

Nothing here sleeps before a stimulus: every wait polls for the state that
proves what the test needs, up to a deadline, and fails saying what it last saw.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The demo MCP server built into mcpvisor.
DEMO = {"command": "${MCPVISOR}", "args": ["demo-server", "--port", "${PORT}"]}


def mcpvisor_binary() -> Path:
    """The debug build that `scripts/test` makes (`cargo build`), or $MCPVISOR_BIN."""
    if os.environ.get("MCPVISOR_BIN"):
        return Path(os.environ["MCPVISOR_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target / "debug" / "mcpvisor"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run `cargo build` first (scripts/test does)")
    return binary


def wait_until(what: str, within: float, probe, every: float = 0.05):
    """Calls `probe` until it returns something truthy, at most `within` seconds; returns that value."""
    deadline = time.monotonic() + within
    last = None
    while True:
        try:
            last = probe()
        except Exception as error:  # a probe may race the page: keep trying until the deadline
            last = error
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {within} s; last seen: {last!r}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_range(size: int) -> tuple[int, int]:
    """A block of `size` free ports, clear of the Rust tests' 20000-50000."""
    for _ in range(50):
        lo = random.randrange(52000, 60000 - size)
        try:
            for port in (lo, lo + size // 2, lo + size - 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return lo, lo + size - 1
    raise RuntimeError("no free port range found")


class Daemon:
    """`mcpvisor serve` as a child process on its own workspaces and state folders."""

    def __init__(self, files: dict[str, dict], token: str | None = None, ports: int = 64):
        self.dir = Path(tempfile.mkdtemp(prefix="mcpvisor-browser-"))
        self.workspaces = self.dir / "workspaces"
        self.workspaces.mkdir()
        for name, body in files.items():
            (self.workspaces / f"{name}.json").write_text(json.dumps(body))
        self.token = token
        self.listen = f"127.0.0.1:{free_port()}"
        self.url = f"http://{self.listen}"
        self.range = port_range(ports)
        self.process = None
        self.start()

    def start(self):
        """Starts (or starts again, on the same folders and address) and waits for /readyz."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCPVISOR_")}
        args = [
            str(mcpvisor_binary()), "serve",
            "--workspaces", str(self.workspaces),
            "--state", str(self.dir / "state"),
            "--listen", self.listen,
            "--port-range", f"{self.range[0]}-{self.range[1]}",
        ]
        if self.token:
            args += ["--token", self.token]
        log = open(self.dir / "daemon.log", "ab")
        self.process = subprocess.Popen(args, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        wait_until("daemon is ready", 60, lambda: self.ready())

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"mcpvisor serve exited with {self.process.returncode}: {self.log()[-2000:]}")
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def log(self) -> str:
        return (self.dir / "daemon.log").read_text(errors="replace")

    def request(self, path: str, method: str = "GET", token: str | None = "default", body=None):
        """(status, parsed JSON or text) of one API call, with the daemon's token unless told otherwise."""
        headers = {"Accept": "application/json"}
        token = self.token if token == "default" else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, method=method, headers=headers, data=data)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str):
        status, body = self.request(path)
        assert status == 200, f"GET {path}: {status} {body}"
        return body

    def post(self, path: str):
        status, body = self.request(path, method="POST")
        assert status in (200, 202), f"POST {path}: {status} {body}"
        return body

    def status(self, name: str) -> dict:
        return self.get(f"/api/workspaces/{name}")

    def statuses(self) -> dict[str, str]:
        return {w["workspace"]: w["status"] for w in self.get("/api/workspaces")["workspaces"]}

    def wait_status(self, name: str, status: str, within: float = 20) -> dict:
        return wait_until(
            f"{name} is {status}", within, lambda: (s := self.status(name))["status"] == status and s
        )

    def last_seq(self) -> int:
        """The seq of the last notification (the `events published` counter)."""
        for line in self.get_text("/metrics").splitlines():
            if line.startswith("mcpvisor_events_published_total "):
                return int(float(line.split()[1]))
        raise AssertionError("no mcpvisor_events_published_total in /metrics")

    def get_text(self, path: str) -> str:
        status, body = self.request(path)
        assert status == 200, f"GET {path}: {status}"
        return body if isinstance(body, str) else json.dumps(body)

    def stop(self):
        """SIGTERM, which stops every child, and waits for the daemon to exit."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def find_browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, from $CHROMIUM/$CHROMEDRIVER or PATH."""
    browser = os.environ.get("CHROMIUM") or next(
        (p for p in map(shutil.which, ["chromium", "chromium-browser", "google-chrome"]) if p), None
    )
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        raise RuntimeError("chromium and chromedriver are needed: run scripts/setup-browser")
    return browser, driver


def start_browser(width: int = 1280, height: int = 800):
    """A headless Chromium with a `width` x `height` viewport, and console logs kept."""
    # Selenium must not go looking for a browser or driver to download.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in [
        "--headless=new",
        "--no-sandbox",  # root in containers; the pages are our own
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--window-size={width},{height}",
    ]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    viewport(chrome, width, height)
    return chrome


def viewport(driver, width: int, height: int):
    """Sets the page's viewport to exactly `width` x `height` CSS pixels."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def color_scheme(driver, scheme: str):
    """Emulates `prefers-color-scheme: scheme` (light or dark)."""
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]}
    )
