"""Browser harness: Playwright (sync API) driving Debian's chromium against a real `facemint serve`.

- `browser` (session): /usr/bin/chromium launched headless by Playwright through `executable_path` (Playwright's
  own browser download is never used; `make test` installs chromium). A missing chromium fails the tests: they
  are never skipped.
- `live_server` (session, one per xdist worker): `facemint serve` in a process of its own on a free loopback port,
  on this worker's test database and Redis, with exactly the settings of the `settings` fixture (same secrets and
  API-key pepper), so what a test seeds with tests/factories.py is what the browser sees. The after-test clean-up
  (tests/conftest.py) empties the tables and flushes Redis under it; the server keeps no state of its own between
  requests, only idle pooled connections, which hold no locks. `start_live_server(settings)` starts another, for
  a module that needs different settings.
- `new_context(**options)`: a fresh browser context (its own cookies and storage: one signed-in user each) whose
  relative URLs resolve against the live server, with a 10 s default timeout; closed after the test.
- `page`: a page in a fresh context.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright
from pydantic import SecretStr

from facemint.config import Settings
from tests.conftest import make_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these, chromium keeps calling out to Google's services, on a network that has none.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000
SERVER_START_SECONDS = 60

expect.set_options(timeout=TIMEOUT_MS)


# --- the server -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveServer:
    url: str  # http://127.0.0.1:<port>, no trailing slash
    settings: Settings  # what the server runs with
    process: subprocess.Popen[bytes]
    log: Path  # the server's stdout and stderr

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _env_value(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: _env_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_env_value(item) for item in value]
    return value


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as the FACEMINT_* variable that gives it (unset ones left out): a process started with these
    reads back exactly `settings`."""
    env = {}
    for name in type(settings).model_fields:
        value = _env_value(getattr(settings, name))
        if value is None:
            continue
        if isinstance(value, dict | list):
            env[f"FACEMINT_{name.upper()}"] = json.dumps(value)
        elif isinstance(value, bool):
            env[f"FACEMINT_{name.upper()}"] = "true" if value else "false"
        else:
            env[f"FACEMINT_{name.upper()}"] = str(value)
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _serve(settings: Settings, log: Path) -> LiveServer:
    """One try: `facemint serve` on a free port, answering /healthz (RuntimeError, with the log's tail, if not)."""
    port = _free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port, "api_url": f"http://127.0.0.1:{port}"})
    # The test process's own FACEMINT_* variables (the test servers' URLs, say) are not the server's business.
    env = {name: value for name, value in os.environ.items() if not name.startswith("FACEMINT_")}
    env.update(settings_env(settings))
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "facemint.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(url=f"http://127.0.0.1:{port}", settings=settings, process=process, log=log)
    deadline = time.monotonic() + SERVER_START_SECONDS
    while not _healthy(server.url):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError(f"`facemint serve` did not start on port {port}:\n{server.log_tail()}")
        time.sleep(0.05)
    return server


@contextlib.contextmanager
def start_live_server(settings: Settings, log_dir: Path | None = None) -> Iterator[LiveServer]:
    """`facemint serve` with `settings` (host and port chosen here), until the block ends. A port taken between
    choosing it and binding it is retried on another."""
    log = Path(tempfile.mkstemp(prefix="facemint-serve-", suffix=".log", dir=log_dir)[1])
    for attempt in range(3):
        try:
            server = _serve(settings, log)
            break
        except RuntimeError:
            if attempt == 2 or "address already in use" not in log.read_text(errors="replace"):
                raise
    try:
        yield server
    finally:
        _stop(server.process)


@pytest.fixture(scope="session")
def live_server(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real `facemint serve` on this worker's test database and Redis, with the `settings` fixture's settings
    (its data directory aside: one of its own)."""
    root = tmp_path_factory.mktemp("live-server")
    settings = make_settings(database_url, redis_url, data_dir=root / "data")
    with start_live_server(settings, log_dir=root) as server:
        yield server


# --- the browser ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's chromium, headless. Missing, it fails the tests (never skips them): `make browser` installs it."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the console's browser tests need Debian's chromium "
            "(`make browser`, or `apt-get install --no-install-recommends chromium`)",
            pytrace=False,
        )
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()


@pytest.fixture
def new_context(browser: Browser, live_server: LiveServer) -> Iterator[Callable[..., BrowserContext]]:
    """`new_context(**options)`: a fresh context (Playwright's `Browser.new_context` options; `base_url` defaults
    to the live server's), with a 10 s default timeout. Every context made is closed after the test."""
    made: list[BrowserContext] = []

    def make(**options: Any) -> BrowserContext:
        options.setdefault("base_url", live_server.url)
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()


@pytest.fixture
def page(new_context: Callable[..., BrowserContext]) -> Page:
    """A page in a fresh context: relative URLs go to the live server."""
    return new_context().new_page()
