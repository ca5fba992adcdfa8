"""Shared browser fixtures: Debian's chromium driven by Playwright (never a downloaded browser).

`browser` is one chromium for the session; `page` is a fresh context and page for one test that fails the test
on any console error, uncaught page error, failed request or HTTP error answer (>= 400) the test did not say it
expects. Sign in with `sign_in_cookie` (a role's session cookie) or `sign_in_admin` (the /console/login form).
tests/conftest.py imports the fixtures, so every test module can ask for `page`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, Response, sync_playwright

CHROMIUM = os.environ.get("TOLLHOUSE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}


@dataclass
class PageProblems:
    """What went wrong in the browser during a test; `expect_status` allows an error answer on purpose."""

    problems: list[str] = field(default_factory=list)
    allowed: set[int] = field(default_factory=set)

    def expect_status(self, *statuses: int) -> None:
        self.allowed.update(statuses)

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            text = message.text
            if str(message.location.get("url", "")).endswith("/favicon.ico"):  # the browser's own guess
                return
            if any(f"status of {s}" in text for s in self.allowed):  # chromium logs every error answer
                return
            self.problems.append(f"console error: {text} at {message.location}")

    def page_error(self, error: Exception) -> None:
        self.problems.append(f"page error: {error}")

    def failed(self, request: Request) -> None:
        self.problems.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def response(self, response: Response) -> None:
        if response.status >= 400 and response.status not in self.allowed \
                and not response.url.endswith("/favicon.ico"):
            self.problems.append(f"HTTP {response.status} for {response.request.method} {response.url}")


# Module scope, not session: Playwright's sync API leaves its event loop set as the main thread's running loop
# while it is started, so every later test calling asyncio.run() would fail ("cannot be called from a running
# event loop"). Started per browser-test module, it is stopped before the next module's tests run.
@pytest.fixture(scope="module")
def playwright_instance() -> Iterator[Playwright]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium; "
                    "scripts/test installs it)", pytrace=False)
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    b = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def page_problems() -> PageProblems:
    return PageProblems()


@pytest.fixture
def page(browser: Browser, page_problems: PageProblems) -> Iterator[Page]:
    """A fresh page (own cookies) at 1280x800; the test fails if the browser saw an error."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    p = context.new_page()
    p.set_default_timeout(10_000)
    p.on("console", page_problems.console)
    p.on("pageerror", page_problems.page_error)
    p.on("requestfailed", page_problems.failed)
    p.on("response", page_problems.response)
    try:
        yield p
    finally:
        context.close()
    assert not page_problems.problems, "the browser saw errors:\n" + "\n".join(page_problems.problems)


def sign_in_cookie(page: Page, base_url: str, cookie: str) -> None:
    """Sign `page` in with a session cookie ("tollhouse_console=<value>", e.g. tests/console_roles.role_cookie)."""
    name, _, value = cookie.partition("=")
    host = urlsplit(base_url).hostname or "127.0.0.1"
    page.context.add_cookies([{"name": name, "value": value, "domain": host, "path": path, "httpOnly": True,
                               "sameSite": "Strict"} for path in ("/console/", "/api/v1/")])  # as the gateway sets it


def sign_in_admin(page: Page, base_url: str, admin_token: str, name: str = "admin",
                  next_path: str = "/console/") -> None:
    """Sign in through the /console/login form with the admin token (role admin); ends on `next_path`."""
    page.goto(f"{base_url}/console/login?next={next_path}")
    page.fill("#token", admin_token)
    page.fill("#name", name)
    with page.expect_navigation():
        page.click("button")
