"""Playwright (Python) driving Debian's Chromium against pytest-django's `live_server`.

No browser is ever downloaded: Chromium comes from Debian's `chromium` package
(`make browser-deps` installs it when /usr/bin/chromium is missing). Every request the page
makes to anywhere but the live server is blocked and recorded, so a test also proves the
admin loads nothing from the internet. Screenshots go to test-artifacts/browser/.
"""

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path(os.environ.get("BRONCO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
PASSWORD = "pw-for-tests-only"


@pytest.fixture(scope="module")
def browser(django_db_setup):
    """One Chromium per test module. Playwright's sync API keeps an asyncio loop running in
    this thread while it is started, which trips Django's async-safety check on every ORM
    call made here (the test's own, and the database setup): the check is lifted for exactly
    as long as Playwright runs, and the database is set up before it starts."""
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium missing at {CHROMIUM}: run `make browser-deps`")
    from playwright.sync_api import sync_playwright

    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            try:
                yield browser
            finally:
                browser.close()
    finally:
        if before is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


@pytest.fixture
def page(browser, live_server) -> Iterator:
    """A fresh browser context per test; only the live server is reachable."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.set_default_timeout(15_000)
    own = urlsplit(live_server.url).netloc
    outside: list[str] = []

    def only_the_live_server(route) -> None:
        netloc = urlsplit(route.request.url).netloc
        if netloc == own or route.request.url.startswith(("data:", "about:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_live_server)
    try:
        yield context.new_page()
    finally:
        context.close()
    assert outside == [], f"the page tried to reach outside the live server: {outside}"


def shot(page, name: str) -> Path:
    """Full-page screenshot at test-artifacts/browser/<name>.png."""
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def login(page, live_server, username: str) -> None:
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
